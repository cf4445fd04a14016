//! The replication credential: what lets a connection act as a standby.
//!
//! A standby receives the whole journal (every movement of every user) and its
//! acknowledgements decide when a `sync` primary may answer; so the node serves replication
//! only to connections that presented the cluster's replication token in an `authenticate`
//! frame (the node's TLS certificate proves the node to the client; nothing proved the client
//! to the node). The token is 32 random bytes, hex, in a file readable by the owner only:
//! `<data_dir>/replication.token`, made by a primary at its first start, or the file
//! `--replication-token-file` names. Every node of a cluster uses the same token: a standby
//! is started with `--replication-token-file` pointing at a copy of its primary's, and keeps
//! using that file when promoted, so the old primary, rejoining with its own file, matches.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Bytes of randomness in a token (64 hex digits in its file).
const TOKEN_RANDOM_BYTES: usize = 32;
/// Longest token file read (a token is 64 hex digits and a newline).
const TOKEN_FILE_BYTES_MAX: u64 = 1024;

/// The token a node checks and presents.
#[derive(Clone)]
pub struct ReplicationToken {
    token: Vec<u8>,
    pub path: PathBuf,
}

impl std::fmt::Debug for ReplicationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("ReplicationToken")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why the token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "{path}: no replication token; a standby needs a copy of its primary's (the primary's <data_dir>/replication.token) given with --replication-token-file"
    )]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: a replication token is 32 to 128 hex digits on one line")]
    Malformed { path: PathBuf },
}

impl ReplicationToken {
    /// The token in `file` (or `<data_dir>/replication.token`). `create`: make one when the
    /// file does not exist (a primary at its first start); a standby must be given one.
    pub fn load(
        data_dir: &Path,
        file: Option<&Path>,
        create: bool,
    ) -> Result<ReplicationToken, TokenError> {
        let path = file.map_or_else(|| data_dir.join("replication.token"), Path::to_path_buf);
        let io = |source| TokenError::Io {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            if !create {
                return Err(TokenError::Missing { path });
            }
            let mut random = [0u8; TOKEN_RANDOM_BYTES];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
                .map_err(|_| io(std::io::Error::other("no randomness for a token")))?;
            let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            let temporary = path.with_extension("token.tmp");
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut out = options.open(&temporary).map_err(io)?;
            out.write_all(format!("{hex}\n").as_bytes()).map_err(io)?;
            out.sync_all().map_err(io)?;
            std::fs::rename(&temporary, &path).map_err(io)?;
            tracing::info!(path = %path.display(), "replication token created: give a copy to each standby (--replication-token-file)");
        }
        let file = std::fs::File::open(&path).map_err(io)?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(file, TOKEN_FILE_BYTES_MAX),
            &mut text,
        )
        .map_err(io)?;
        let text = text.trim();
        let valid = (32..=128).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(TokenError::Malformed { path });
        }
        Ok(ReplicationToken {
            token: text.as_bytes().to_vec(),
            path,
        })
    }

    /// The bytes a standby presents.
    pub fn bytes(&self) -> &[u8] {
        &self.token
    }

    /// True when `presented` is this token (compared in constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        presented.len() == self.token.len()
            && presented
                .iter()
                .zip(&self.token)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_makes_a_token_a_standby_needs_one_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("paycore-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(
            ReplicationToken::load(&dir, None, false),
            Err(TokenError::Missing { .. })
        ));
        let made = ReplicationToken::load(&dir, None, true).expect("made");
        let again = ReplicationToken::load(&dir, None, false).expect("read back");
        assert!(again.matches(made.bytes()));
        assert!(!again.matches(b"0000"));
        assert!(!again.matches(&made.bytes()[1..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&made.path)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by the owner only");
        }
        let bad = dir.join("bad.token");
        std::fs::write(&bad, "not hex at all, not hex at all, not hex").expect("write");
        assert!(matches!(
            ReplicationToken::load(&dir, Some(&bad), false),
            Err(TokenError::Malformed { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
