//! The workload labels an operator may put on the workload metric families
//! (`--metrics.labels`, `[metrics] labels`), and their bounds (`--metrics.series-cap`,
//! `--metrics.series-ttl`). Each label's source and bound is in docs/metrics-and-events.md.
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricLabel {
    Unit,
    Container,
    Pod,
    K8sNamespace,
    Role,
    Port,
    PeerGroup,
    Process,
}

impl MetricLabel {
    pub const ALL: [MetricLabel; 8] = [
        MetricLabel::Unit,
        MetricLabel::Container,
        MetricLabel::Pod,
        MetricLabel::K8sNamespace,
        MetricLabel::Role,
        MetricLabel::Port,
        MetricLabel::PeerGroup,
        MetricLabel::Process,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MetricLabel::Unit => "unit",
            MetricLabel::Container => "container",
            MetricLabel::Pod => "pod",
            MetricLabel::K8sNamespace => "k8s_namespace",
            MetricLabel::Role => "role",
            MetricLabel::Port => "port",
            MetricLabel::PeerGroup => "peer_group",
            MetricLabel::Process => "process",
        }
    }
}

/// Useful on a server and bounded by what runs there: never pod, process, port or address by
/// default (a cluster's pods churn; docs/metrics-and-events.md says how to choose).
pub const DEFAULT_LABELS: &str = "unit,container,role,peer_group";
pub const DEFAULT_SERIES_CAP: u32 = 500;
pub const DEFAULT_SERIES_TTL: Duration = Duration::from_secs(600);

/// The chosen labels, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricLabels(pub Vec<MetricLabel>);

/// A comma-separated list of label names; empty (or `none`) for no workload labels.
pub fn parse_list(text: &str) -> Result<MetricLabels, String> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "none" {
            continue;
        }
        let label = MetricLabel::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| {
                let all: Vec<_> = MetricLabel::ALL.iter().map(|l| l.name()).collect();
                format!("unknown label {name:?} (one of {})", all.join(", "))
            })?;
        if out.contains(&label) {
            return Err(format!("label {name:?} given twice"));
        }
        out.push(label);
    }
    Ok(MetricLabels(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_names_the_bad_one() {
        assert_eq!(
            parse_list(DEFAULT_LABELS).unwrap().0,
            [
                MetricLabel::Unit,
                MetricLabel::Container,
                MetricLabel::Role,
                MetricLabel::PeerGroup
            ]
        );
        assert!(parse_list("").unwrap().0.is_empty());
        assert!(parse_list("none").unwrap().0.is_empty());
        assert!(parse_list("unit,pid").unwrap_err().contains("\"pid\""));
        assert!(parse_list("unit,unit").unwrap_err().contains("twice"));
    }
}
