//! leakscope: an eBPF memory-leak tracer. The binary (`main.rs`) is a thin
//! shell over this library so that tests can drive a hunt directly.
//!
//! Flow of a hunt: `preflight` checks the machine, `target` finds or launches
//! the process, `attach` loads and places the probes, `collect` turns ring
//! buffer events into the outstanding-memory model of `heap`, `symbolize`
//! names the stacks, `findings` groups the sites into one finding per leak,
//! and `report` renders the result.

pub mod analyze;
pub mod attach;
pub mod census_series;
pub mod check;
pub mod cli;
pub mod collect;
pub mod diff;
pub mod findings;
pub mod fuzzing;
pub mod generate;
pub mod heap;
pub mod hunt;
pub mod input;
pub mod lookup;
pub mod mode;
pub mod node;
pub mod placement;
pub mod preflight;
pub mod report;
pub mod symbolize;
pub mod target;
pub mod target_files;
pub mod timeline;
pub mod unwind_rules;
pub mod uprobe_multi;
pub mod v8;
pub mod watch;
