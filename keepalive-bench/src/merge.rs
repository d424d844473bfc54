//! Running some sections (`--only`) rewrites only those: the other sections of an existing
//! report, and their lines in the summary, are kept as they were.
use std::fmt::Write as _;

use crate::report::section_key;

/// A report split at its `## ` titles: (text before the summary, summary rows, sections).
struct Parts<'a> {
    head: &'a str,
    rows: Vec<&'a str>,
    sections: Vec<(&'a str, &'a str)>,
}

fn split(text: &str) -> Parts<'_> {
    let mut chunks = text.split("\n## ");
    let head = chunks.next().unwrap_or("");
    let mut rows = Vec::new();
    let mut sections = Vec::new();
    for c in chunks {
        let (title, body) = c.split_once('\n').unwrap_or((c, ""));
        if title.trim() == "Summary" {
            rows.extend(
                body.lines()
                    .filter(|l| l.starts_with("| ") && !l.starts_with("| section |")),
            );
        } else {
            sections.push((title.trim(), body));
        }
    }
    Parts {
        head,
        rows,
        sections,
    }
}

fn row_key(row: &str) -> (u32, String) {
    section_key(row.trim_start_matches("| "))
}

/// `new` (this run's report) with the sections and summary rows of `old` that this run did not
/// produce, in section order.
pub fn merge(old: &str, new: &str) -> String {
    let (o, n) = (split(old), split(new));
    let ran: Vec<(u32, String)> = n.sections.iter().map(|(t, _)| section_key(t)).collect();
    let kept = |k: &(u32, String)| k.0 == u32::MAX || !ran.contains(k);
    let mut rows: Vec<&str> = n.rows.clone();
    rows.extend(o.rows.iter().filter(|r| kept(&row_key(r))));
    rows.sort_by_key(|r| row_key(r));
    let mut sections: Vec<(&str, &str)> = n.sections.clone();
    sections.extend(
        o.sections
            .iter()
            .filter(|(t, _)| kept(&section_key(t)) && !n.sections.iter().any(|(nt, _)| nt == t)),
    );
    sections.sort_by_key(|(t, _)| section_key(t));
    let mut s = n.head.trim_end().to_string();
    let date = o
        .head
        .lines()
        .find_map(|l| l.strip_prefix("| date (UTC) | "))
        .map(|d| d.trim_end_matches(" |").to_string())
        .unwrap_or_else(|| "an earlier run".into());
    let _ = write!(
        s,
        "\n\nThis run measured only some sections; the others, and their lines in the summary, are kept from the \
         report of {date} (its machine and load are not repeated here).\n\n## Summary\n\n| section | target | measured | met |\n|---|---|---|---|\n"
    );
    for r in rows {
        let _ = writeln!(s, "{r}");
    }
    for (t, b) in sections {
        let _ = write!(s, "\n## {t}\n{b}");
    }
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_sections_not_run() {
        let old = "# B\n\n| date (UTC) | 2026-01-01 |\n\n## Summary\n\n| section | target | measured | met |\n|---|---|---|---|\n| 1 kernel | a | b | yes |\n| 8 scale | old | x | no |\n\n## 1. Kernel\n\nold one\n\n## 8. Scale: 1 M sockets\n\nold eight\n";
        let new = "# B\n\n| date (UTC) | 2026-02-02 |\n\n## Summary\n\n| section | target | measured | met |\n|---|---|---|---|\n| 8 scale | new | y | yes |\n\n## 8. Scale: 40000 sockets\n\nnew eight\n";
        let m = super::merge(old, new);
        assert!(m.contains("old one"));
        assert!(m.contains("new eight"));
        assert!(!m.contains("old eight"));
        assert!(m.contains("| 1 kernel | a | b | yes |"));
        assert!(!m.contains("| 8 scale | old"));
        assert!(m.find("## 1. Kernel") < m.find("## 8. Scale"));
        assert!(m.contains("2026-01-01"));
    }
}
