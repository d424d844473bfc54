//! The written image read back by skopeo, the containers/image library podman, CRI-O and
//! `skopeo copy` to a registry use: what it reports must be what layout.rs wrote. Catches a
//! layout that only our own writer understands (a wrong media type, a digest that does not
//! match its blob, an index a runtime cannot resolve to its platform).
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use super::{BINARY, Built, CONFIG, PORT, Written};
use crate::exec::output;

pub fn check(b: &Built) -> Result<()> {
    for w in &b.images {
        let reference = b.reference(w);
        let inspect = skopeo(&[], &["inspect", &reference])?;
        eprintln!("skopeo inspect {reference}:\n{}", pretty(&inspect));
        check_inspect(&inspect, b, w).with_context(|| format!("skopeo inspect {reference}"))?;
        let config = skopeo(&[], &["inspect", "--config", &reference])?;
        check_config(&config, w).with_context(|| format!("skopeo inspect --config {reference}"))?;

        // The multi-platform tag is our index, and resolves to this platform's image on such a
        // host (skopeo reports the index's digest with the chosen instance's other fields).
        let all = format!("oci:{}:{}", b.dir.display(), b.version);
        let on_arch = skopeo(&["--override-arch", w.architecture], &["inspect", &all])?;
        ensure!(
            on_arch["Digest"] == b.index.digest.as_str()
                && on_arch["Architecture"] == w.architecture
                && on_arch["Layers"] == serde_json::json!([w.layer.digest]),
            "skopeo --override-arch {} inspect {all}: digest {} architecture {} layers {}, \
             expected the index {} resolving to the {} layer {}",
            w.architecture,
            on_arch["Digest"],
            on_arch["Architecture"],
            on_arch["Layers"],
            b.index.digest,
            w.architecture,
            w.layer.digest
        );
        // The single-file archive holds the same image.
        let archived = format!(
            "oci-archive:{}:{}-{}",
            b.archive.display(),
            b.version,
            w.architecture
        );
        let from_archive = skopeo(&[], &["inspect", &archived])?;
        ensure!(
            from_archive["Digest"] == w.manifest.digest.as_str(),
            "skopeo inspect {archived}: digest {} is not {}",
            from_archive["Digest"],
            w.manifest.digest
        );
    }
    eprintln!(
        "image: skopeo reads back every manifest, config, label and tag of {} ({} platform(s))",
        b.dir.display(),
        b.images.len()
    );
    Ok(())
}

fn skopeo(global: &[&str], args: &[&str]) -> Result<Value> {
    let text = output(Command::new("skopeo").args(global).args(args))?;
    serde_json::from_str(&text)
        .with_context(|| format!("skopeo {} printed no JSON", args.join(" ")))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `skopeo inspect`: the manifest's digest and layer, the config's platform, date and labels.
fn check_inspect(got: &Value, b: &Built, w: &Written) -> Result<()> {
    let expect = [
        ("Digest", w.manifest.digest.as_str()),
        ("Architecture", w.architecture),
        ("Os", "linux"),
        ("Created", b.created.as_str()),
    ];
    for (key, want) in expect {
        ensure!(got[key] == want, "{key} is {}, expected {want:?}", got[key]);
    }
    ensure!(
        got["Layers"] == serde_json::json!([w.layer.digest]),
        "Layers are {}, expected [{:?}]",
        got["Layers"],
        w.layer.digest
    );
    ensure!(
        got["Labels"] == serde_json::to_value(&b.labels)?,
        "Labels are {}, expected {}",
        got["Labels"],
        serde_json::to_value(&b.labels)?
    );
    Ok(())
}

/// `skopeo inspect --config`: what a runtime will run, and the layer it unpacks.
fn check_config(got: &Value, w: &Written) -> Result<()> {
    let c = &got["config"];
    let cmd = format!("--config.file={CONFIG}");
    let expect = [
        ("Entrypoint", serde_json::json!([BINARY])),
        ("Cmd", serde_json::json!([cmd])),
        ("User", serde_json::json!("0:0")),
        (
            "ExposedPorts",
            serde_json::json!({ format!("{PORT}/tcp"): {} }),
        ),
    ];
    for (key, want) in expect {
        ensure!(
            c[key] == want,
            "config.{key} is {}, expected {want}",
            c[key]
        );
    }
    ensure!(
        got["architecture"] == w.architecture && got["os"] == "linux",
        "platform is {}/{}, expected linux/{}",
        got["os"],
        got["architecture"],
        w.architecture
    );
    ensure!(
        got["rootfs"]["diff_ids"] == serde_json::json!([w.diff_id]),
        "rootfs.diff_ids are {}, expected [{:?}]",
        got["rootfs"]["diff_ids"],
        w.diff_id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::image::layout::{Descriptor, MEDIA_CONFIG, MEDIA_LAYER, MEDIA_MANIFEST};

    fn written() -> Written {
        let d = |media_type, digest: &str| Descriptor {
            media_type,
            digest: digest.into(),
            size: 1,
        };
        Written {
            architecture: "amd64",
            manifest: d(MEDIA_MANIFEST, "sha256:m"),
            config: d(MEDIA_CONFIG, "sha256:c"),
            layer: d(MEDIA_LAYER, "sha256:l"),
            diff_id: "sha256:d".into(),
        }
    }

    fn good_config() -> Value {
        json!({
            "architecture": "amd64", "os": "linux",
            "config": super::super::image_config(&BTreeMap::new()),
            "rootfs": {"type": "layers", "diff_ids": ["sha256:d"]},
        })
    }

    #[test]
    fn config_check_accepts_what_we_write_and_names_what_differs() {
        let w = written();
        check_config(&good_config(), &w).unwrap();
        let mut wrong = good_config();
        wrong["config"]["Entrypoint"] = json!(["/bin/sh"]);
        let e = check_config(&wrong, &w).unwrap_err().to_string();
        assert!(e.contains("config.Entrypoint"), "{e}");
        let mut arm = good_config();
        arm["architecture"] = json!("arm64");
        assert!(check_config(&arm, &w).is_err());
        let mut layers = good_config();
        layers["rootfs"]["diff_ids"] = json!(["sha256:x"]);
        assert!(check_config(&layers, &w).is_err());
    }
}
