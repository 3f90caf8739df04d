//! nginx as a TLS terminator that requires client certificates.

use tempfile::TempDir;

use crate::certs::TestCerts;
use crate::http::tcp_accepts;
use crate::ports::free_port;
use crate::process::{ServerProcess, find_binary};

/// nginx terminating TLS on a free loopback port in front of an HTTP server on
/// `upstream_port`, requiring a client certificate signed by the test CA.
pub struct TlsProxy {
    pub port: u16,
    /// Kills nginx when the proxy is dropped; nothing else uses it.
    _process: ServerProcess,
    dir: TempDir,
}

impl TlsProxy {
    pub fn start(certs: &TestCerts, upstream_port: u16) -> Self {
        let dir = TempDir::new().expect("temp dir for nginx");
        let d = dir.path().display().to_string();
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               client_max_body_size 30m;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 ssl_client_certificate {ca};\n    ssl_verify_client on;\n\
                 location / {{ proxy_pass http://127.0.0.1:{upstream_port}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
            cert = certs.server_cert.display(),
            key = certs.server_key.display(),
            ca = certs.ca.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut process = ServerProcess::new(
            "nginx",
            find_binary("nginx"),
            vec![
                "-p".into(),
                d.clone(),
                "-e".into(),
                format!("{d}/error.log"),
                "-c".into(),
                conf_path.display().to_string(),
            ],
            dir.path(),
            Some(dir.path().join("error.log")),
        );
        process.spawn();
        process.wait_until("TCP connect succeeds", || tcp_accepts(port));
        TlsProxy { port, _process: process, dir }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// nginx's access log: one line per request it proxied.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}
