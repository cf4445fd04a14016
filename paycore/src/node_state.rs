//! The node's role and epoch, kept in `<data_dir>/node-state.json` so that a restart keeps
//! them: `primary` or `standby`, the epoch this node writes (or follows), and per shard the
//! epoch history — which epoch's primary wrote the records from which sequence on. A standby
//! learns the history from its primary (`replica_welcome`); a promotion appends to it. The
//! primary uses it to tell a returning old primary where its records stop being history.
//!
//! Written atomically (temporary file, fsync, rename, directory fsync): a crash leaves the old
//! or the new state, never half of one.

use std::path::{Path, PathBuf};

use paycore_protocol::EpochStart;
use serde_json::{Value, json};

const FILE_NAME: &str = "node-state.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub role: Role,
    /// The epoch this node writes as a primary, or the newest it has followed as a standby.
    pub epoch: u64,
    /// Per shard: epoch starts, in sequence order.
    pub history: Vec<Vec<EpochStart>>,
}

impl NodeState {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// The saved state, or a new primary of epoch 1 whose history starts at sequence 1.
    pub fn load_or_new(data_dir: &Path, shards: u16) -> Result<NodeState, String> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(NodeState {
                    role: Role::Primary,
                    epoch: 1,
                    history: (0..shards)
                        .map(|_| {
                            vec![EpochStart {
                                epoch: 1,
                                first_sequence: 1,
                            }]
                        })
                        .collect(),
                });
            }
            Err(error) => return Err(format!("{}: {error}", path.display())),
        };
        let bad = |what: &str| format!("{}: {what}", path.display());
        let value: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let role = match value["role"].as_str() {
            Some("primary") => Role::Primary,
            Some("standby") => Role::Standby,
            _ => return Err(bad("role must be \"primary\" or \"standby\"")),
        };
        let epoch = value["epoch"]
            .as_u64()
            .ok_or_else(|| bad("epoch missing"))?;
        let shards_history = value["history"]
            .as_array()
            .ok_or_else(|| bad("history missing"))?;
        if shards_history.len() != usize::from(shards) {
            return Err(bad(&format!(
                "history for {} shards, the node has {shards}",
                shards_history.len()
            )));
        }
        let mut history = Vec::with_capacity(shards_history.len());
        for entries in shards_history {
            let entries = entries.as_array().ok_or_else(|| bad("history entry"))?;
            let mut starts = Vec::with_capacity(entries.len());
            for entry in entries {
                let pair = entry.as_array().filter(|p| p.len() == 2);
                let (Some(epoch), Some(first_sequence)) = (
                    pair.and_then(|p| p[0].as_u64()),
                    pair.and_then(|p| p[1].as_u64()),
                ) else {
                    return Err(bad("history entries are [epoch, first_sequence]"));
                };
                starts.push(EpochStart {
                    epoch,
                    first_sequence,
                });
            }
            history.push(starts);
        }
        Ok(NodeState {
            role,
            epoch,
            history,
        })
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        let path = Self::path(data_dir);
        let history: Vec<Value> = self
            .history
            .iter()
            .map(|starts| {
                Value::Array(
                    starts
                        .iter()
                        .map(|s| json!([s.epoch, s.first_sequence]))
                        .collect(),
                )
            })
            .collect();
        let text = serde_json::to_string_pretty(&json!({
            "role": self.role.name(),
            "epoch": self.epoch,
            "history": history,
        }))
        .map_err(|e| e.to_string())?;
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        if std::fs::read_to_string(&path).is_ok_and(|saved| saved == text) {
            // Unchanged (every start saves): writing nothing lets a node start on a full disk
            // and serve read-only (issue 25).
            return Ok(());
        }
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let temporary = data_dir.join(format!("{FILE_NAME}.tmp"));
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary).map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&temporary, &path).map_err(io)?;
        paycore_journal::sync_dir(data_dir).map_err(io)
    }

    /// The last sequence written in `epoch` on `shard` according to the history (`None`:
    /// `epoch` is still being written, or is not in the history).
    pub fn end_of_epoch(&self, shard: u16, epoch: u64) -> Option<u64> {
        let starts = self.history.get(usize::from(shard))?;
        let index = starts.iter().position(|s| s.epoch == epoch)?;
        starts
            .get(index + 1)
            .map(|next| next.first_sequence.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_names_epoch_ends() {
        let dir = std::env::temp_dir().join(format!("paycore-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut state = NodeState::load_or_new(&dir, 2).expect("new");
        assert_eq!((state.role, state.epoch), (Role::Primary, 1));
        state.role = Role::Standby;
        state.epoch = 2;
        state.history[1].push(EpochStart {
            epoch: 2,
            first_sequence: 41,
        });
        state.save(&dir).expect("save");
        let loaded = NodeState::load_or_new(&dir, 2).expect("load");
        assert_eq!(loaded, state);
        assert_eq!(loaded.end_of_epoch(1, 1), Some(40));
        assert_eq!(loaded.end_of_epoch(1, 2), None);
        assert_eq!(loaded.end_of_epoch(0, 1), None);
        assert!(
            NodeState::load_or_new(&dir, 3).is_err(),
            "shard count mismatch"
        );
        std::fs::write(dir.join(FILE_NAME), "{").expect("write");
        assert!(NodeState::load_or_new(&dir, 2).is_err(), "garbage is named");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
