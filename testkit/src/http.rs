//! Tiny HTTP servers and a client for traffic tests, all busybox: `httpd` serving a name
//! (which backend answered) or the client's address as the server saw it (NAT or not),
//! and one GET with `nc` (busybox wget may need NSS).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::Ns;

/// A server process, killed on drop.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cmd args` inside `ns`'s network namespace (nsenter; the filesystem stays the host's).
pub fn in_ns(ns: &Ns, cmd: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .arg(cmd)
        .args(args);
    c
}

fn httpd(ns: &Ns, www: &Path, port: u16) -> Server {
    let port = port.to_string();
    let child = in_ns(
        ns,
        "busybox",
        &[
            "httpd",
            "-f",
            "-p",
            &port,
            "-h",
            www.to_str().unwrap_or("/nonexistent"),
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap_or_else(|e| panic!("start busybox httpd: {e}"));
    Server(child)
}

/// An HTTP server in `ns` answering `/` with `name` on port 80 (files under `dir/name`).
pub fn serve(ns: &Ns, dir: &Path, name: &str) -> Server {
    let www = dir.join(name);
    std::fs::create_dir_all(&www).unwrap_or_else(|e| panic!("mkdir {}: {e}", www.display()));
    std::fs::write(www.join("index.html"), format!("{name}\n"))
        .unwrap_or_else(|e| panic!("write index: {e}"));
    httpd(ns, &www, 80)
}

/// A busybox httpd CGI script answering with the client address the server sees.
pub const WHOAMI_CGI: &str =
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n";

/// Put [`WHOAMI_CGI`] at `www/cgi-bin/whoami`.
pub fn install_whoami(www: &Path) -> std::io::Result<()> {
    let cgi = www.join("cgi-bin");
    std::fs::create_dir_all(&cgi)?;
    let script = cgi.join("whoami");
    std::fs::write(&script, WHOAMI_CGI)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
}

/// The address in a [`WHOAMI_CGI`] answer: busybox httpd listens on IPv6 and shows IPv4
/// peers as "[::ffff:a.b.c.d]".
pub fn client_addr(answer: &str) -> String {
    let a = answer.trim().trim_matches(['[', ']']);
    a.strip_prefix("::ffff:").unwrap_or(a).to_string()
}

/// An HTTP server in `ns` on `port` answering `/cgi-bin/whoami` with the client address
/// it sees (files under `dir/whoami`).
pub fn serve_whoami(ns: &Ns, dir: &Path, port: u16) -> Server {
    let www = dir.join("whoami");
    install_whoami(&www).unwrap_or_else(|e| panic!("install whoami in {}: {e}", www.display()));
    httpd(ns, &www, port)
}

/// One HTTP GET of `path` from inside `from`: the body's last line, None on no answer.
pub fn get(from: &Ns, ip: &str, port: u16, path: &str) -> Option<String> {
    let out = in_ns(
        from,
        "sh",
        &[
            "-c",
            &format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {ip} {port}"),
        ],
    )
    .stdin(Stdio::null())
    .output()
    .ok()?;
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    body.lines()
        .last()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

/// The client address a [`serve_whoami`] server at `ip:port` sees for a request from
/// `from`; polled until the server answers (it may still be starting).
pub fn whoami(from: &Ns, ip: &str, port: u16) -> String {
    let seen = crate::wait_for(
        &format!("whoami server at {ip}:{port}"),
        std::time::Duration::from_secs(20),
        || get(from, ip, port, "/cgi-bin/whoami"),
    );
    client_addr(&seen)
}
