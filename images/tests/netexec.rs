//! netexec answers over HTTP and UDP as the dataplane tests expect.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command};
use std::time::Duration;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> String {
    for _ in 0..50 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            return out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("netexec did not listen on {port}");
}

/// A netexec on free ports, answering as pod `name`; returns it with its HTTP and UDP ports.
fn netexec(name: &str) -> (Proc, u16, u16) {
    let (http, udp) = (free_port(), free_port());
    let p = Proc(
        Command::new(env!("CARGO_BIN_EXE_netexec"))
            .args([
                "--http-port",
                &http.to_string(),
                "--udp-port",
                &udp.to_string(),
            ])
            .env("POD_NAME", name)
            .spawn()
            .unwrap(),
    );
    (p, http, udp)
}

#[test]
fn netexec_serves_hostname_clientip_echo_and_udp() {
    let (_p, http, udp) = netexec("pod-a");
    assert_eq!(http_get(http, "/hostname"), "pod-a");
    assert_eq!(http_get(http, "/echo?msg=hi%20there"), "hi there");
    assert_eq!(http_get(http, "/healthz"), "ok");
    assert!(http_get(http, "/clientip").starts_with("127.0.0.1:"));

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 256];
    for (req, want) in [
        ("hostname", "pod-a".to_owned()),
        ("echo ping", "ping".to_owned()),
    ] {
        sock.send_to(req.as_bytes(), ("127.0.0.1", udp)).unwrap();
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(String::from_utf8_lossy(&buf[..n]), want);
    }
    sock.send_to(b"clientip", ("127.0.0.1", udp)).unwrap();
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        sock.local_addr().unwrap().to_string()
    );
}

#[test]
fn dial_udp_prints_the_reply() {
    let (http, udp) = (free_port(), free_port());
    let _p = Proc(
        Command::new(env!("CARGO_BIN_EXE_netexec"))
            .args([
                "--http-port",
                &http.to_string(),
                "--udp-port",
                &udp.to_string(),
            ])
            .spawn()
            .unwrap(),
    );
    assert_eq!(http_get(http, "/healthz"), "ok");
    let reply = Command::new(env!("CARGO_BIN_EXE_netexec"))
        .args(["dial-udp", &format!("127.0.0.1:{udp}"), "echo over-udp"])
        .output()
        .unwrap();
    assert!(reply.status.success());
    assert_eq!(String::from_utf8_lossy(&reply.stdout).trim(), "over-udp");
    // Nobody answering is an error, not a hang.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_netexec"))
        .args(["dial-udp", &silent.local_addr().unwrap().to_string(), "x"])
        .output()
        .unwrap();
    assert!(!st.status.success());
}
