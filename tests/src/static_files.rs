//! A tiny HTTP/1.1 server for the files of one directory (GET only, no listing): enough to serve a
//! Helm repository (index.yaml and chart archives) on loopback, for tests and for `make run`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Component, Path, PathBuf},
    thread,
};

/// A running server; it stops with the process.
#[derive(Debug)]
pub struct StaticFiles {
    /// Base URL, ending in `/`.
    pub url: String,
}

impl StaticFiles {
    /// Serves `dir` on `address` (e.g. `127.0.0.1:0` for a free port) from a background thread.
    pub fn serve(dir: &Path, address: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address)?;
        let url = format!("http://{}/", listener.local_addr()?);
        let dir = dir.to_path_buf();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let dir = dir.clone();
                thread::spawn(move || {
                    let _ = answer(stream, &dir);
                });
            }
        });
        Ok(StaticFiles { url })
    }
}

/// The file under `dir` that a request path names, if it stays inside `dir`.
fn resolve(dir: &Path, request_path: &str) -> Option<PathBuf> {
    let path = request_path
        .split(['?', '#'])
        .next()?
        .trim_start_matches('/');
    let relative = Path::new(path);
    if path.is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    Some(dir.join(relative))
}

fn answer(stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        // Skip the headers (GET has no body).
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
                break;
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let file = (method == "GET" || method == "HEAD")
            .then(|| resolve(dir, target))
            .flatten()
            .and_then(|p| std::fs::read(p).ok());
        let (status, body) = match file {
            Some(body) => ("200 OK", body),
            None => ("404 Not Found", Vec::new()),
        };
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
            body.len()
        )?;
        if method != "HEAD" {
            stream.write_all(&body)?;
        }
        stream.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_inside_the_directory() {
        let dir = Path::new("/srv/repo");
        assert_eq!(
            resolve(dir, "/index.yaml"),
            Some(PathBuf::from("/srv/repo/index.yaml"))
        );
        assert_eq!(
            resolve(dir, "/genpack-0.1.0.tgz?x=1"),
            Some(PathBuf::from("/srv/repo/genpack-0.1.0.tgz"))
        );
        assert_eq!(resolve(dir, "/../etc/passwd"), None);
        assert_eq!(resolve(dir, "/a/./b"), Some(PathBuf::from("/srv/repo/a/b")));
        assert_eq!(resolve(dir, "/"), None);
    }
}
