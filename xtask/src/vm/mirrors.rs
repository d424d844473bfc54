//! The Debian mirrors the VM harness downloads from: the ones this machine's apt already uses
//! (either sources format), so the harness works wherever apt does.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};

/// The Debian archive and security mirrors this machine's apt already uses, so the harness works
/// wherever apt does. KAT_DEBIAN_MIRROR / KAT_DEBIAN_SECURITY_MIRROR override them.
pub fn mirrors() -> Result<(String, String)> {
    let (mut main, mut security) = (None, None);
    for uri in system_uris() {
        let uri = uri.trim_end_matches('/').to_owned();
        if uri.ends_with("/debian-security") {
            security.get_or_insert(uri);
        } else if uri.ends_with("/debian") {
            main.get_or_insert(uri);
        }
    }
    let main = std::env::var("KAT_DEBIAN_MIRROR").ok().or(main).context(
        "no Debian mirror found in /etc/apt; set KAT_DEBIAN_MIRROR to the archive's URI",
    )?;
    let security = std::env::var("KAT_DEBIAN_SECURITY_MIRROR")
        .ok()
        .or(security)
        .unwrap_or_else(|| format!("{main}-security"));
    Ok((main, security))
}

/// URIs of enabled `deb` sources in the machine's apt configuration.
fn system_uris() -> Vec<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    let mut uris = Vec::new();
    for file in files {
        let deb822 = match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => true,
            Some("list") => false,
            _ => continue,
        };
        if let Ok(text) = fs::read_to_string(&file) {
            uris.extend(uris_in(deb822, &text));
        }
    }
    uris
}

/// Parses either format: deb822 stanzas (`*.sources`) or one-line `deb [opts] URI suite …`.
fn uris_in(deb822: bool, text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    if deb822 {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            let is_deb = field("Types:").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
            let enabled = field("Enabled:").is_none_or(|e| e != "no");
            if is_deb && enabled {
                uris.extend(
                    field("URIs:")
                        .into_iter()
                        .flat_map(str::split_whitespace)
                        .map(str::to_owned),
                );
            }
        }
    } else {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("deb") {
                continue;
            }
            // Skip the optional [key=value …] block, which may span several words.
            let mut in_opts = false;
            let uri = words.find(|w| {
                if w.starts_with('[') {
                    in_opts = !w.ends_with(']');
                    return false;
                }
                if in_opts {
                    in_opts = !w.ends_with(']');
                    return false;
                }
                true
            });
            uris.extend(uri.map(str::to_owned));
        }
    }
    uris
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_uris_in_both_formats() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\n\
                      Types: deb-src\nURIs: http://src.invalid/debian\n\n\
                      Types: deb\nEnabled: no\nURIs: http://off.invalid/debian\n";
        assert_eq!(
            uris_in(true, deb822),
            [
                "http://mirror.invalid/debian",
                "http://mirror.invalid/debian-security"
            ]
        );
        let one_line = "# deb http://commented.invalid/debian bookworm main\n\
                        deb [arch=amd64 signed-by=/k.gpg] http://a.invalid/debian bookworm main\n\
                        deb http://b.invalid/debian-security bookworm-security main\n";
        assert_eq!(
            uris_in(false, one_line),
            [
                "http://a.invalid/debian",
                "http://b.invalid/debian-security"
            ]
        );
    }
}
