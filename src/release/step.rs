//! The vocabulary of a release: its six steps, and the effects a step may leave behind that the
//! failure path must undo. The decisions made about them are in `plan.rs`. See `LIFECYCLE.md`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The six steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Create,
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

    pub fn number(self) -> usize {
        self as usize + 1
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Create => "create",
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
            Step::ReadOnly if app_read_only => &[Effect::ReadOnly, Effect::AppReadOnly],
            Step::ReadOnly => &[Effect::ReadOnly],
            Step::Backup | Step::Restore | Step::Migrate | Step::Switch => &[],
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/6 {}", self.number(), self.name())
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
