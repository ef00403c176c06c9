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
pub mod pages;
pub mod retainers;
pub mod version;

pub use frames::{JsFrame, JsNamer};
pub use metadata::Layout;
pub use version::Version;

use leak_common::V8PageLayout;

use crate::lookup::ModuleRef;

/// What leakscope knows of a Node target's V8.
pub struct Target {
    /// Names its JS frames; None, with a warning that says why, when its V8
    /// is not one leakscope knows: its JS frames then stay unnamed, never misnamed.
    pub namer: Option<JsNamer>,
    /// How its page hooks are read (`enabled` 0, with a warning: page sizes not read).
    pub pages: V8PageLayout,
}

/// The V8 of the Node target `pid`, whose node is `node`.
pub fn target(pid: u32, node: &ModuleRef) -> Target {
    let (namer, pages) =
        match metadata::Symbols::read(&node.open_path).and_then(|symbols| Ok((Version::read(&symbols)?, symbols))) {
            Ok((version, symbols)) => (
                target_namer(pid, node, Layout::from_symbols(&symbols, version)),
                pages::layout(version),
            ),
            Err(e) => (target_namer(pid, node, Err(e)), None),
        };
    if pages.is_none() {
        eprintln!(
            "leakscope: warning: node: the V8 heap's page sizes are not read (a V8 whose page layout leakscope has not measured): v8_heap figures are 0"
        );
    }
    Target {
        namer,
        pages: pages.unwrap_or_default(),
    }
}

fn target_namer(pid: u32, node: &ModuleRef, layout: anyhow::Result<Layout>) -> Option<JsNamer> {
    match layout {
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
