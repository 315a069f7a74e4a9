//! HAProxy's runtime API over its Unix stats socket (admin level): the
//! in-memory certificate update (`set ssl cert` + `commit ssl cert`, or
//! `abort ssl cert`), `show ssl cert` to read what a process holds, and
//! the master CLI's `reload`. One command per connection, as HAProxy's
//! non-interactive mode wants; every connection has read and write
//! timeouts and every answer a size cap.
//!
//! The socket is trusted only through [`crate::owner::trusted_socket`]
//! (root's socket in root's directories) before certswap, as root, sends
//! it a private key. A payload (certificate and key) is never put into an
//! error or a log line: errors name the command's verb and file only, and
//! carry HAProxy's answer, which never echoes the payload.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound on one command's connect + write + answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// `show ssl cert` of thousands of files is well under this.
const MAX_ANSWER_BYTES: u64 = 4 * 1024 * 1024;

/// Why a runtime API command failed. None of them holds a payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The socket is not one only root could have placed.
    #[error("{0}; certswap sends keys only to a socket only root can place")]
    Untrusted(crate::owner::OwnerError),
    #[error("{path}: cannot connect to HAProxy's socket: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: `{command}` failed on the socket: {source}")]
    Io {
        path: PathBuf,
        command: String,
        source: std::io::Error,
    },
    #[error("{path}: `{command}` answered more than {MAX_ANSWER_BYTES} bytes")]
    TooLarge { path: PathBuf, command: String },
    /// HAProxy refused the command; `answer` is its reply, on one line.
    #[error("{path}: HAProxy refused `{command}`: {answer}")]
    Refused {
        path: PathBuf,
        command: String,
        answer: String,
    },
    /// A file name the CLI cannot carry (it splits on spaces).
    #[error("{file}: HAProxy's CLI cannot name a file with a space or control character")]
    BadName { file: PathBuf },
    /// A payload line that would end the payload early (an empty line).
    #[error("{file}: the PEM for `set ssl cert` holds no certificate")]
    EmptyPayload { file: PathBuf },
    /// `show ssl cert FILE` did not say what certswap needs.
    #[error("{path}: `show ssl cert {file}` gave no {field}")]
    Unreadable {
        path: PathBuf,
        file: PathBuf,
        field: &'static str,
    },
}

/// What HAProxy holds for one certificate file (`show ssl cert FILE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCert {
    /// Serial, uppercase hex without separators (as `openssl x509 -serial`).
    pub serial: String,
    /// `notAfter` as HAProxy prints it (`Dec  5 05:04:55 2026 GMT`).
    pub not_after: String,
    /// SHA-1 of the leaf's DER, uppercase hex.
    pub sha1: String,
}

/// A connection target: an admin-level stats socket or the master socket.
#[derive(Debug, Clone)]
pub struct Socket {
    path: PathBuf,
    timeout: Duration,
}

impl Socket {
    /// The socket at `path`, after checking that only root could have put
    /// it there ([`crate::owner::trusted_socket`]).
    pub fn trusted(what: &'static str, path: &Path, timeout: Duration) -> Result<Socket, ApiError> {
        crate::owner::trusted_socket(what, path).map_err(ApiError::Untrusted)?;
        Ok(Socket {
            path: path.to_path_buf(),
            timeout,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send one command line, then `payload` (already framed), shut the
    /// write side (the master CLI answers only then), read the answer to
    /// EOF. `verb` is what errors name: never the payload.
    fn exchange(&self, verb: &str, line: &str, payload: &[u8]) -> Result<String, ApiError> {
        let io = |source| ApiError::Io {
            path: self.path.clone(),
            command: verb.to_string(),
            source,
        };
        let mut s = UnixStream::connect(&self.path).map_err(|source| ApiError::Connect {
            path: self.path.clone(),
            source,
        })?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut msg = Vec::with_capacity(line.len() + payload.len() + 2);
        msg.extend_from_slice(line.as_bytes());
        msg.push(b'\n');
        msg.extend_from_slice(payload);
        s.write_all(&msg).map_err(io)?;
        // Best effort: the stats socket answers without it, the master CLI
        // waits for it.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        (&mut s)
            .take(MAX_ANSWER_BYTES + 1)
            .read_to_end(&mut answer)
            .map_err(io)?;
        if answer.len() as u64 > MAX_ANSWER_BYTES {
            return Err(ApiError::TooLarge {
                path: self.path.clone(),
                command: verb.to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    fn refused(&self, command: String, answer: &str) -> ApiError {
        ApiError::Refused {
            path: self.path.clone(),
            command,
            answer: one_line(answer),
        }
    }

    /// Every certificate file HAProxy has loaded (`show ssl cert`).
    pub fn loaded_files(&self) -> Result<Vec<PathBuf>, ApiError> {
        let answer = self.exchange("show ssl cert", "show ssl cert", b"")?;
        Ok(parse_file_list(&answer))
    }

    /// What HAProxy serves for `file` (`show ssl cert FILE`).
    pub fn show(&self, file: &Path) -> Result<LoadedCert, ApiError> {
        let name = cli_name(file)?;
        let command = format!("show ssl cert {name}");
        let answer = self.exchange(&command, &command, b"")?;
        parse_show(&answer).map_err(|field| match field {
            // Not a store entry: HAProxy's own words say so.
            "Filename" => self.refused(command.clone(), &answer),
            field => ApiError::Unreadable {
                path: self.path.clone(),
                file: file.to_path_buf(),
                field,
            },
        })
    }

    /// Replace what HAProxy holds for `file` with `pem` (certificate, chain
    /// and key), in memory: `set ssl cert` then `commit ssl cert`; on any
    /// failure after the transaction opened, `abort ssl cert`, so no half
    /// transaction stays behind to block the next one. Then `show ssl
    /// cert` must report `want_serial`.
    pub fn replace(
        &self,
        file: &Path,
        pem: &[u8],
        want_serial: &str,
    ) -> Result<LoadedCert, ApiError> {
        let name = cli_name(file)?;
        let payload = frame_payload(file, pem)?;
        let set = format!("set ssl cert {name}");
        let answer = self.exchange(
            &set,
            &format!("set ssl cert {} <<", set_name(name)),
            &payload,
        )?;
        if !answer.contains("Transaction created") && !answer.contains("Transaction updated") {
            // Nothing was opened (an unknown file) or it was and the
            // payload was refused: an abort is harmless either way.
            let _ = self.abort(file);
            return Err(self.refused(set, &answer));
        }
        let commit = format!("commit ssl cert {name}");
        let committed = self.exchange(&commit, &commit, b"").and_then(|a| {
            if a.contains("Success!") {
                Ok(())
            } else {
                Err(self.refused(commit.clone(), &a))
            }
        });
        if let Err(e) = committed {
            let _ = self.abort(file);
            return Err(e);
        }
        let now = self.show(file)?;
        if !now.serial.eq_ignore_ascii_case(want_serial) {
            return Err(ApiError::Refused {
                path: self.path.clone(),
                command: commit,
                answer: format!(
                    "HAProxy reports serial {} for {name} after the commit, not {want_serial}",
                    now.serial
                ),
            });
        }
        Ok(now)
    }

    /// `abort ssl cert FILE`: drop an open transaction ("No ongoing
    /// transaction" is fine: nothing to drop).
    pub fn abort(&self, file: &Path) -> Result<(), ApiError> {
        let name = cli_name(file)?;
        let command = format!("abort ssl cert {name}");
        let answer = self.exchange(&command, &command, b"")?;
        if answer.contains("aborted") || answer.contains("No ongoing transaction") {
            Ok(())
        } else {
            Err(self.refused(command, &answer))
        }
    }

    /// The master CLI's `reload` (the master re-executes itself, keeps its
    /// pid, and forks new workers that read the files from disk). HAProxy
    /// 2.6 answers nothing; a later one answers "Success=1" or "Success=0".
    pub fn master_reload(&self) -> Result<(), ApiError> {
        let answer = self.exchange("reload", "reload", b"")?;
        if answer.contains("Success=0") {
            return Err(self.refused("reload".into(), &answer));
        }
        Ok(())
    }
}

/// A file name as one CLI word. HAProxy splits on spaces and would read a
/// newline as the end of the command.
fn cli_name(file: &Path) -> Result<&str, ApiError> {
    let bad = || ApiError::BadName {
        file: file.to_path_buf(),
    };
    let s = file.to_str().ok_or_else(bad)?;
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err(bad());
    }
    Ok(s)
}

/// The name `set ssl cert` must be given for the store entry `name`.
/// HAProxy 2.6 reads a trailing `.crt`, `.key`, `.ocsp`, `.issuer` or
/// `.sctl` as "this part of the entry without the extension" (measured:
/// `set ssl cert /x/site.crt` answers "not referenced by the
/// configuration" although `show ssl cert` lists it), so such a name gets
/// `.crt` appended: the certificate part of the entry `name`, whose
/// payload (certificate and key) replaces both.
fn set_name(name: &str) -> std::borrow::Cow<'_, str> {
    const PARTS: [&str; 5] = [".crt", ".key", ".ocsp", ".issuer", ".sctl"];
    if PARTS.iter().any(|e| name.ends_with(e)) {
        format!("{name}.crt").into()
    } else {
        name.into()
    }
}

/// The payload of `set ssl cert FILE <<`: the PEM without empty lines (an
/// empty line ends the payload), then the empty line.
fn frame_payload(file: &Path, pem: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(pem.len() + 2);
    for line in pem.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    if !out.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(ApiError::EmptyPayload {
            file: file.to_path_buf(),
        });
    }
    out.push(b'\n');
    Ok(out)
}

/// The answer of `show ssl cert`: "# filename" then one file a line; a
/// `*` marks a file with an open transaction.
fn parse_file_list(answer: &str) -> Vec<PathBuf> {
    answer
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| PathBuf::from(l.trim_start_matches('*')))
        .collect()
}

/// The fields certswap reads from `show ssl cert FILE`; the missing
/// field's name when one is absent.
fn parse_show(answer: &str) -> Result<LoadedCert, &'static str> {
    let field = |name: &str| {
        answer.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    };
    field("Filename").ok_or("Filename")?;
    Ok(LoadedCert {
        serial: field("Serial")
            .filter(|s| !s.is_empty())
            .ok_or("Serial")?
            .to_ascii_uppercase(),
        not_after: field("notAfter").ok_or("notAfter")?,
        sha1: field("SHA1 FingerPrint")
            .filter(|s| !s.is_empty())
            .ok_or("SHA1 FingerPrint")?
            .to_ascii_uppercase(),
    })
}

/// An answer on one line ([`super::summarize`]), at most a few hundred
/// characters.
fn one_line(answer: &str) -> String {
    super::summarize(answer, None).chars().take(300).collect()
}

/// SHA-1 of a certificate's DER as HAProxy prints it (`SHA1 FingerPrint`).
pub fn sha1_fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Filename: /etc/haproxy/site.pem\nStatus: Used\nSerial: 2d30102a\nnotBefore: Dec  2 05:04:55 2026 GMT\nnotAfter: Dec  5 05:04:55 2026 GMT\nSubject Alternative Name: \nAlgorithm: RSA2048\nSHA1 FingerPrint: 39c2b268\nSubject: /CN=a.test\n";

    #[test]
    fn show_answer_is_read() {
        let c = parse_show(SHOW).expect("parsed");
        assert_eq!(c.serial, "2D30102A");
        assert_eq!(c.sha1, "39C2B268");
        assert_eq!(c.not_after, "Dec  5 05:04:55 2026 GMT");
        assert_eq!(
            parse_show("Can't display the certificate: Not found!\n"),
            Err("Filename")
        );
        assert_eq!(parse_show("Filename: /x\n"), Err("Serial"));
    }

    #[test]
    fn file_list_drops_the_header_and_transaction_marks() {
        let l = parse_file_list("# filename\n/a/site.pem\n*/b/x.pem.rsa\n\n");
        assert_eq!(
            l,
            vec![PathBuf::from("/a/site.pem"), PathBuf::from("/b/x.pem.rsa")]
        );
    }

    #[test]
    fn payload_has_no_empty_line_before_its_end() {
        let pem = b"-----BEGIN CERTIFICATE-----\r\nAAAA\r\n-----END CERTIFICATE-----\n\n\n-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----";
        let f = frame_payload(Path::new("/x.pem"), pem).expect("framed");
        let text = String::from_utf8(f).expect("utf8");
        assert!(text.ends_with("-----END PRIVATE KEY-----\n\n"), "{text:?}");
        assert_eq!(text.matches("\n\n").count(), 1, "{text:?}");
        assert!(!text.contains('\r'));
        assert!(matches!(
            frame_payload(Path::new("/x.pem"), b"\n\n"),
            Err(ApiError::EmptyPayload { .. })
        ));
    }

    #[test]
    fn names_the_cli_cannot_carry_are_refused() {
        for bad in ["/a b.pem", "/a\nb.pem", "", "/a\\b"] {
            assert!(
                matches!(cli_name(Path::new(bad)), Err(ApiError::BadName { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(cli_name(Path::new("/etc/x.pem")).expect("ok"), "/etc/x.pem");
    }

    #[test]
    fn errors_never_carry_the_payload() {
        // A socket that is not there: the error names the verb and file,
        // not the key that would have been sent.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Socket {
            path: dir.path().join("none.sock"),
            timeout: Duration::from_millis(200),
        };
        let pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----\n";
        let e = s
            .replace(Path::new("/x.pem"), pem, "01")
            .expect_err("no socket");
        let msg = format!("{e} {e:?}");
        assert!(
            !msg.contains("SECRETKEYBYTES") && !msg.contains("PRIVATE"),
            "{msg}"
        );
    }

    #[test]
    fn a_socket_of_another_user_or_a_symlink_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.sock");
        let _l = std::os::unix::net::UnixListener::bind(&real).expect("bind");
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(matches!(
            Socket::trusted("stats socket", &link, DEFAULT_TIMEOUT),
            Err(ApiError::Untrusted(_))
        ));
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").expect("write");
        assert!(matches!(
            Socket::trusted("stats socket", &file, DEFAULT_TIMEOUT),
            Err(ApiError::Untrusted(_))
        ));
        if nix::unistd::Uid::effective().is_root() {
            std::os::unix::fs::chown(&real, Some(65534), None).expect("chown");
            let e = Socket::trusted("stats socket", &real, DEFAULT_TIMEOUT)
                .expect_err("nobody's socket");
            assert!(e.to_string().contains("uid 65534"), "{e}");
        }
    }

    #[test]
    fn a_name_with_a_part_extension_is_set_as_its_crt_part() {
        assert_eq!(set_name("/a/site.pem"), "/a/site.pem");
        assert_eq!(set_name("/a/site.pem.rsa"), "/a/site.pem.rsa");
        assert_eq!(set_name("/a/site.crt"), "/a/site.crt.crt");
        assert_eq!(set_name("/a/site.key"), "/a/site.key.crt");
    }

    #[test]
    fn sha1_is_uppercase_hex() {
        assert_eq!(
            sha1_fingerprint(b"abc"),
            "A9993E364706816ABA3E25717850C26C9CD0D89D"
        );
    }
}
