//! nginx as a test backend: one worker in the foreground, its files in a test's
//! directory, an access log of `|`-separated fields, stopped on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// Start nginx in `dir` on a free port. `log_format` is the access log's
    /// format (fields separated by `|`); `http` is what goes inside `http {}`
    /// besides logs and temp paths, given the port.
    pub fn start(dir: &Path, log_format: &str, http: impl Fn(u16) -> String) -> Nginx {
        let port = super::free_port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               log_format t '{log_format}';\n\
               access_log {d}/access.log t;\n\
               client_body_temp_path {d}/client_body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               {}\n\
             }}\n",
            http(port)
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("nginx.stderr")).unwrap(),
            ))
            .spawn()
            .expect("spawn nginx");
        let mut n = Nginx {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(st)) = n.child.try_wait() {
                panic!("nginx exited ({st}): {}", n.logs());
            }
            assert!(Instant::now() < deadline, "nginx not up: {}", n.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "stderr:\n{}\nerror.log:\n{}",
            read("nginx.stderr"),
            read("error.log")
        )
    }

    /// Access log lines, split at `|`.
    pub fn access(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
