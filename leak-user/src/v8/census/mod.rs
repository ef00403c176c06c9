//! A census of the JS heap, taken from outside while the target runs:
//! V8's old-space and large-object pages are read from `/proc/PID/mem`
//! and walked object by object (`walk`), and each object is counted in its
//! group (`groups`). Taken right after a full GC, when those spaces hold
//! what survived it; the caller drops a census that a full GC overlapped
//! (objects may have moved under it).

pub mod groups;
pub mod layout;
pub mod pages;
pub mod walk;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub use groups::GroupKey;
pub use layout::CensusLayout;

use crate::v8::JsNamer;

/// Instances kept per group as starting points for retaining paths.
pub const SAMPLES_PER_GROUP: usize = 4;

/// What bounds one census: past either, it stops and is dropped.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_duration: Duration,
    pub max_bytes_read: u64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            max_duration: Duration::from_secs(60),
            max_bytes_read: 16 << 30,
        }
    }
}

/// One group's counts in one census.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupCount {
    pub count: u64,
    pub bytes: u64,
    /// Map and Set: their entries.
    pub entries: u64,
    /// Typed arrays and ArrayBuffers: the bytes of their backing stores.
    pub external_bytes: u64,
    /// Tagged addresses of a few instances.
    pub samples: Vec<u64>,
}

/// What one census counted.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub groups: HashMap<GroupKey, GroupCount>,
    pub objects: u64,
    pub live_bytes: u64,
    /// FreeSpace on the pages walked: not objects, in no group.
    pub free_bytes: u64,
    pub unparsed_bytes: u64,
    pub pages: usize,
    pub bytes_read: u64,
    pub duration: Duration,
    /// CPU time of the census thread.
    pub cpu: Duration,
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Why a census or path search stopped when told to: a full GC ended
/// during it, so it would be dropped anyway.
pub const CANCELLED: &str = "a full GC ended during it";

/// Counts the JS heap of `pid`; `namer` names functions and strings.
/// Stops, with [`CANCELLED`], at the first page after `cancelled` is set.
pub fn take(pid: u32, layout: &CensusLayout, namer: JsNamer, budget: Budget, cancelled: &AtomicBool) -> Result<Census> {
    let started = Instant::now();
    let cpu_started = thread_cpu();
    let (memory, found) = pages::open_heap(pid, layout)?;
    let mut walker = walk::Walker::new(&memory, layout);
    let mut classifier = groups::Classifier::new(namer);
    let mut census = Census {
        pages: found.len(),
        ..Census::default()
    };
    for page in &found {
        if cancelled.load(Ordering::Relaxed) {
            bail!(CANCELLED);
        }
        if started.elapsed() > budget.max_duration || walker.bytes_read > budget.max_bytes_read {
            bail!(
                "the census went over its budget ({:.0} s, {} MiB read) after {} of {} pages",
                budget.max_duration.as_secs_f64(),
                budget.max_bytes_read >> 20,
                census.pages,
                found.len()
            );
        }
        let walked = walker.walk(page, |walker, object| {
            let key = classifier.key(walker, object);
            let count = census.groups.entry(key).or_default();
            count.count += 1;
            count.bytes += object.size;
            if count.samples.len() < SAMPLES_PER_GROUP {
                count.samples.push(object.tagged);
            }
            extras(walker, object, count);
        });
        let Some(stats) = walked else {
            bail!(
                "the page at {:#x} could not be read (freed, or the process is exiting)",
                page.area_start
            );
        };
        census.objects += stats.objects;
        census.live_bytes += stats.bytes;
        census.free_bytes += stats.free_bytes;
        census.unparsed_bytes += stats.unparsed_bytes;
    }
    census.bytes_read = walker.bytes_read;
    census.duration = started.elapsed();
    census.cpu = thread_cpu().saturating_sub(cpu_started);
    Ok(census)
}

/// Entries of Maps and Sets, backing-store bytes of typed arrays and buffers.
fn extras(walker: &mut walk::Walker, object: &walk::Object, count: &mut GroupCount) {
    let l = walker.layout;
    let t = object.info.instance_type;
    if t == l.types.js_map || t == l.types.js_set {
        // The OrderedHashTable: a FixedArray whose first slot counts the elements.
        let entries = object
            .word(l.collection_table)
            .filter(|table| l.is_fixed_array_like(walker.instance_type(*table).unwrap_or(0)))
            .and_then(|table| walker.memory.u64(table - 1 + l.frames.offsets.fixed_array_data))
            .and_then(walk::smi);
        count.entries += entries.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    } else if t == l.types.js_array_buffer {
        count.external_bytes += object.word(l.buffer_byte_length).unwrap_or(0);
    } else if t == l.types.js_typed_array || t == l.types.js_data_view {
        count.external_bytes += object.word(l.view_byte_length).unwrap_or(0);
    }
}
