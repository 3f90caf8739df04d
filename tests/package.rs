//! The Debian package's metadata (`cargo deb`, [package.metadata.deb] in Cargo.toml) points at
//! files that exist, with safe modes, and its maintainer scripts are valid shell. Building the
//! package itself needs `cargo install cargo-deb` and a release build (README, "Packages").

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn deb() -> toml::Table {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).expect("read")).expect("toml");
    manifest["package"]["metadata"]["deb"].as_table().expect("[package.metadata.deb]").clone()
}

#[test]
fn assets_exist_and_the_configuration_is_not_world_readable() {
    let deb = deb();
    let assets = deb["assets"].as_array().expect("assets");
    let mut destinations = Vec::new();
    for a in assets {
        let a = a.as_array().expect("[source, dest, mode]");
        let (src, dest, mode) =
            (a[0].as_str().expect("src"), a[1].as_str().expect("dest"), a[2].as_str().expect("mode"));
        if src != "target/release/heartguard-gateway" {
            assert!(Path::new(ROOT).join(src).is_file(), "asset {src} exists");
        }
        if dest.starts_with("etc/") {
            assert_eq!(mode, "640", "{dest}: root:heartguard-gateway 0640 (postinst sets the group)");
        }
        destinations.push(format!("/{dest}"));
    }
    for conf in deb["conf-files"].as_array().expect("conf-files") {
        let conf = conf.as_str().expect("path");
        assert!(destinations.iter().any(|d| d == conf), "{conf} is installed");
    }
    let units = deb["systemd-units"].as_table().expect("systemd-units");
    let dir = units["unit-scripts"].as_str().expect("unit-scripts");
    assert!(Path::new(ROOT).join(dir).join("heartguard-gateway.service").is_file());
    assert_eq!(units["enable"].as_bool(), Some(true));
}

#[test]
fn maintainer_scripts_are_valid_and_create_the_service_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(ROOT).join(deb()["maintainer-scripts"].as_str().expect("maintainer-scripts"));
    for name in ["postinst", "postrm"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("#DEBHELPER#"), "{name}: cargo-deb adds the systemd steps there");
        assert_ne!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o111, 0, "{name} is executable");
        let out = std::process::Command::new("sh").arg("-n").arg(&path).output().expect("sh -n");
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let postinst = std::fs::read_to_string(dir.join("postinst")).expect("read");
    for step in ["adduser --system", "adduser --quiet heartguard-gateway dialout", "chmod 0640", "install -d -m 0700"] {
        assert!(postinst.contains(step), "postinst: {step}");
    }
}
