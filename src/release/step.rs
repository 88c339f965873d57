//! The vocabulary of a release: its six steps (and the two the online flow adds while the site
//! is still writable), and the effects a step may leave behind that the failure path must undo.
//! The decisions made about them are in `plan.rs`. See `LIFECYCLE.md`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The steps, in the order they run. The freeze flow walks the six of [`Step::ALL`]; the online
/// flow ([`Step::ONLINE`]) adds `Copy` and `CatchUp` before read-only, and its `Backup` ships
/// the last delta and compares the tables instead of dumping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Create,
    /// Online flow: the full copy (dump with its binlog position) into the set and the new db.
    Copy,
    /// Online flow: binlog deltas into the set and the new db, until one is small.
    CatchUp,
    ReadOnly,
    Backup,
    Restore,
    Migrate,
    Switch,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Create,
        Step::ReadOnly,
        Step::Backup,
        Step::Restore,
        Step::Migrate,
        Step::Switch,
    ];

    /// The online flow, in order.
    pub const ONLINE: [Step; 8] = [
        Step::Create,
        Step::Copy,
        Step::CatchUp,
        Step::ReadOnly,
        Step::Backup,
        Step::Restore,
        Step::Migrate,
        Step::Switch,
    ];

    /// The number of the step among the six (the online flow's two extra steps run between
    /// 1 and 2 and carry no number of their own).
    pub fn number(self) -> usize {
        match self {
            Step::Create | Step::Copy | Step::CatchUp => 1,
            Step::ReadOnly => 2,
            Step::Backup => 3,
            Step::Restore => 4,
            Step::Migrate => 5,
            Step::Switch => 6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Copy => "online copy",
            Step::CatchUp => "online catch-up",
            Step::ReadOnly => "read-only",
            Step::Backup => "backup",
            Step::Restore => "restore",
            Step::Migrate => "migrate",
            Step::Switch => "switch",
        }
    }

    /// What this step may leave behind for the failure path to undo. The journal records it when
    /// the step is entered, before anything is done, so a crash in the middle still undoes it;
    /// each undo is harmless when the thing was not done yet.
    pub fn effects(self, app_read_only: bool) -> &'static [Effect] {
        match self {
            Step::Create => &[Effect::NewEnv],
            // They write only into the new env and into a partial set, undone with them.
            Step::Copy | Step::CatchUp => &[],
            Step::ReadOnly if app_read_only => &[Effect::ReadOnly, Effect::AppReadOnly],
            Step::ReadOnly => &[Effect::ReadOnly],
            Step::Backup | Step::Restore | Step::Migrate | Step::Switch => &[],
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Copy | Step::CatchUp => write!(f, "1+/6 {}", self.name()),
            _ => write!(f, "{}/6 {}", self.number(), self.name()),
        }
    }
}

/// Something a release did that must be undone if it does not finish. Whether the switch
/// happened is not one of them: the daemon's state is the truth for that, and it is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Step 1 replaced the idle color's environment with the new, half-made one.
    NewEnv,
    /// Step 2 turned read-only on at the edge.
    ReadOnly,
    /// Step 2 ran `app_read_only.on` in the active web.
    AppReadOnly,
}
