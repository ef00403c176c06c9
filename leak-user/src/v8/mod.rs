//! V8 seen from outside the process: the one place that knows V8's object
//! layouts. `version` and `metadata` read them from the node binary (its
//! `v8dbg_*` postmortem symbols, with version-keyed fallbacks), `memory`
//! reads the target's memory, `frames` names the JS frames of a stack.
//!
//! Every object read is checked by its type (its map's instance type)
//! before a field of it is trusted: the target keeps running, and a stale
//! pointer must give no name rather than a wrong one.

pub mod census;
pub mod frames;
pub mod memory;
pub mod metadata;
pub mod retainers;
pub mod version;

pub use frames::{JsFrame, JsNamer};
pub use metadata::Layout;
pub use version::Version;

use crate::lookup::ModuleRef;

/// The V8 of a Node target, for naming its JS frames: its layout and the
/// namer. None, with a warning that says why, when its V8 is not one
/// leakscope knows: its JS frames then stay unnamed, never misnamed.
pub fn target_namer(pid: u32, node: &ModuleRef) -> Option<JsNamer> {
    match Layout::read(&node.open_path) {
        Ok(layout) => {
            log::info!("V8 {} in {}: JS frames are named", layout.version, node.path.display());
            let is_executable = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == node.path)
                || !node
                    .path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libnode"));
            Some(JsNamer::new(
                pid,
                is_executable.then_some(node.open_path.as_path()),
                layout,
            ))
        }
        Err(e) => {
            eprintln!("leakscope: warning: node: JS frames are not named: {e:#}");
            None
        }
    }
}
