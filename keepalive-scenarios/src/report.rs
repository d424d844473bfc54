//! The one-line-per-scenario result format that CI and the VM harness grep for.

pub struct Line {
    pub scenario: String,
    pub family: String,
    pub mode: String,
    pub failures: Vec<String>,
    /// Informational measurements, printed to stderr so stdout keeps its fixed format.
    pub notes: Vec<String>,
    /// `probe` events the daemon reported for the scenario's flows (None without a daemon).
    pub probes: Option<usize>,
    pub nstat_keepalive: Option<u64>,
    /// Seconds from the last received packet to the death (daemon's if present, else app's).
    pub detect: Option<f64>,
    /// Why the scenario could not run here (a program it drives is not installed): neither a
    /// success nor a failure, so a missing tool can never pass for a working feature.
    pub skipped: Option<String>,
}

impl Line {
    pub fn new(scenario: &str, family: &str, mode: &str) -> Line {
        Line {
            scenario: scenario.to_owned(),
            family: family.to_owned(),
            mode: mode.to_owned(),
            failures: Vec::new(),
            notes: Vec::new(),
            probes: None,
            nstat_keepalive: None,
            detect: None,
            skipped: None,
        }
    }

    /// A skipped scenario is not a failure of the suite; a failure found before the skip
    /// decision (there is none today) would still count.
    pub fn success(&self) -> bool {
        self.failures.is_empty()
    }

    fn result(&self) -> &'static str {
        match (&self.skipped, self.failures.is_empty()) {
            (_, false) => "failure",
            (Some(_), true) => "skipped",
            (None, true) => "success",
        }
    }

    pub fn render(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        // The detail is one quoted field: keep it on one line and free of double quotes.
        let detail = match (&self.skipped, self.failures.is_empty()) {
            (Some(why), true) => why.clone(),
            _ => self.failures.join("; "),
        }
        .replace('"', "'")
        .replace('\n', " | ");
        format!(
            "scenario={} family={} mode={} result={} probes={} nstat_keepalive={} detect_s={} detail=\"{}\"",
            self.scenario,
            self.family,
            self.mode,
            self.result(),
            opt(self.probes.map(|p| p.to_string())),
            opt(self.nstat_keepalive.map(|n| n.to_string())),
            opt(self.detect.map(|d| format!("{d:.2}"))),
            detail
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_fixed_format() {
        let mut l = super::Line::new("crashed", "ipv4", "auto");
        l.nstat_keepalive = Some(3);
        l.detect = Some(4.004);
        assert_eq!(
            l.render(),
            "scenario=crashed family=ipv4 mode=auto result=success probes=- nstat_keepalive=3 detect_s=4.00 detail=\"\""
        );
        l.failures.push("saw \"x\"\nthen y".into());
        assert!(l.render().ends_with(
            "result=failure probes=- nstat_keepalive=3 detect_s=4.00 detail=\"saw 'x' | then y\""
        ));
    }

    #[test]
    fn skipped_is_its_own_result() {
        let mut l = super::Line::new("settings-python", "ipv6", "auto");
        l.skipped = Some("python3 not installed".into());
        assert!(l.success());
        assert_eq!(
            l.render(),
            "scenario=settings-python family=ipv6 mode=auto result=skipped probes=- nstat_keepalive=- detect_s=- detail=\"python3 not installed\""
        );
    }
}
