//! Turns ring-buffer records into the outstanding-memory model.

use std::collections::HashMap;

use aya::maps::{MapData, StackTraceMap};
use leak_common::{EventOp, HeapEvent, MapEvent, Probe, FLAG_ALLOCATOR_INTERNAL, FLAG_ANONYMOUS};

use crate::{
    heap::{charged_size, Heap, Kind, SiteKey},
    symbolize::{skipped_caller, ProcessModules},
};

/// PROT_EXEC: a file mapped executable is a library or JIT image to symbolize.
const PROT_EXEC: u8 = 4;

pub struct Collector {
    pub heap: Heap,
    pub modules: ProcessModules,
    /// Raw user stacks by kernel stack id, read once each.
    stacks: HashMap<i64, Vec<u64>>,
    pub events: u64,
    /// Records that were too short or had an unknown operation.
    pub malformed: u64,
    modules_changed: bool,
}

impl Collector {
    pub fn new(pid: u32) -> Collector {
        Collector {
            heap: Heap::default(),
            modules: ProcessModules::new(pid),
            stacks: HashMap::new(),
            events: 0,
            malformed: 0,
            modules_changed: true,
        }
    }

    /// Applies one ring-buffer record.
    pub fn apply(&mut self, record: &[u8], stack_map: &StackTraceMap<&MapData>) {
        let Some(event) = read_record::<HeapEvent>(record) else {
            self.malformed += 1;
            return;
        };
        let (Some(op), Some(probe)) = (EventOp::from_u8(event.op), Probe::from_u8(event.probe)) else {
            self.malformed += 1;
            return;
        };
        self.events += 1;
        let heap_site = |c: &mut Collector| c.heap.intern(SiteKey::heap(probe, event.stack_id));
        match op {
            EventOp::Alloc => {
                let site = heap_site(self);
                self.heap
                    .alloc(event.addr, charged_size(probe, event.size), event.ts_ns, site);
            }
            EventOp::Free => self.heap.free(event.addr, event.entry_ns),
            EventOp::Realloc => {
                let site = heap_site(self);
                self.heap.realloc(
                    event.old_addr,
                    event.addr,
                    event.size,
                    event.entry_ns,
                    event.ts_ns,
                    site,
                );
            }
            EventOp::Unmap => self.heap.unmap(event.addr, event.size, event.entry_ns),
            EventOp::Exec => {
                self.heap = Heap::default();
                self.modules_changed = true;
            }
            EventOp::Map | EventOp::Remap => {
                let Some(mapping) = read_record::<MapEvent>(record) else {
                    self.malformed += 1;
                    return;
                };
                let internal = event.flags & FLAG_ALLOCATOR_INTERNAL != 0;
                let anonymous = event.flags & FLAG_ANONYMOUS != 0;
                if !anonymous && event.prot & PROT_EXEC != 0 {
                    self.modules_changed = true;
                }
                let site = self.mapping_site(&mapping, probe, internal, stack_map);
                if op == EventOp::Map {
                    self.heap.map(event.addr, event.size, event.ts_ns, site, internal);
                } else {
                    let e = &event;
                    self.heap.remap(
                        e.old_addr, e.old_size, e.addr, e.size, e.entry_ns, e.ts_ns, site, internal,
                    );
                }
            }
        }
    }

    fn mapping_site(
        &mut self,
        mapping: &MapEvent,
        probe: Probe,
        internal: bool,
        stack_map: &StackTraceMap<&MapData>,
    ) -> u32 {
        let event = &mapping.heap;
        let mut key = SiteKey {
            kind: Kind::Mmap,
            anonymous: event.flags & FLAG_ANONYMOUS != 0,
            prot: event.prot,
            ..SiteKey::heap(probe, event.stack_id)
        };
        // Allocator-internal mappings are not shown as sites: skip the unwinding.
        if !internal {
            let frame0 = self
                .raw_stack(event.stack_id, stack_map)
                .and_then(|s| s.first().copied());
            if let Some(ip) = frame0 {
                self.refresh_modules_if_changed();
                key.skipped_caller = skipped_caller(&self.modules, ip, mapping.sp, &mapping.stack_window).unwrap_or(0);
            }
        } else {
            key.stack_id = -1;
        }
        self.heap.intern(key)
    }

    /// The frames of a kernel stack id, innermost first.
    pub fn raw_stack(&mut self, stack_id: i64, stack_map: &StackTraceMap<&MapData>) -> Option<&[u64]> {
        if stack_id < 0 {
            return None;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = self.stacks.entry(stack_id) {
            let trace = stack_map.get(&(stack_id as u32), 0).ok()?;
            slot.insert(trace.frames().iter().map(|f| f.ip).collect());
        }
        self.stacks.get(&stack_id).map(Vec::as_slice)
    }

    /// A stack read earlier with `raw_stack`.
    pub fn cached_stack(&self, stack_id: i64) -> Option<&[u64]> {
        self.stacks.get(&stack_id).map(Vec::as_slice)
    }

    /// Re-reads the target's mappings after it mapped new code. A process
    /// that is gone keeps the modules seen so far.
    pub fn refresh_modules_if_changed(&mut self) {
        if std::mem::take(&mut self.modules_changed) {
            self.refresh_modules();
        }
    }

    pub fn refresh_modules(&mut self) {
        if let Err(e) = self.modules.refresh() {
            log::debug!("cannot re-read the target's mappings: {e}");
        }
    }
}

fn read_record<T: Copy>(record: &[u8]) -> Option<T> {
    (record.len() >= size_of::<T>()).then(|| {
        // SAFETY: length checked; the type is plain data; the read is unaligned-safe.
        unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) }
    })
}
