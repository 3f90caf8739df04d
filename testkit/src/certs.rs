//! TLS material made by the test (a throw-away CA and certificates, with `openssl`), and
//! secret files as the gateway accepts them.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Writes a secret file the way the gateway accepts it: mode 0600.
pub fn write_secret(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A throw-away CA with a server certificate for 127.0.0.1/localhost and a client
/// certificate, made with the `openssl` command (Debian package `openssl`). Keys are PKCS#8
/// PEM with mode 0600, as the gateway requires for secrets.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A second CA that signed nothing here: trusting it alone must fail.
    pub other_ca: PathBuf,
    /// Holds the files; removing them when the certificates are dropped is its only use.
    _dir: TempDir,
}

impl TestCerts {
    pub fn generate() -> Self {
        let dir = TempDir::new().expect("temp dir for certificates");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(d).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "other-ca"] {
            let (key, crt, subj) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN=heartguard test {ca}"));
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(&args);
        }
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let (key, csr, crt, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            let san = if name == "server" { "subjectAltName=IP:127.0.0.1,DNS:localhost\n" } else { "" };
            std::fs::write(d.join(&ext), format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}"))
                .expect("write ext");
            let subj = format!("/CN=heartguard test {name}");
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&args);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
            write_secret(&d.join(&key), &std::fs::read_to_string(d.join(&key)).expect("read key"));
        }
        TestCerts {
            ca: d.join("ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.crt"),
            _dir: dir,
        }
    }
}
