//! The kernel side's unwind rules (`UNWIND_RULES`, leak-ebpf's `unwind`):
//! per code address, how its frame steps to its caller, written from what
//! the user-space unwinder read of the module's CFI while it unwound the
//! stack copy an event brought where the kernel side had no rule.

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use leak_common::UnwindRule;

use crate::symbolize::ProcessModules;

pub struct UnwindRules {
    map: HashMap<MapData, u64, UnwindRule>,
    /// Addresses answered `STOP` for not being code, asked again once the
    /// target's mappings change (a library mapped there since).
    not_code: Vec<u64>,
    /// Addresses whose rules were written.
    written: HashSet<u64>,
    /// Rules the map refused (kept to report once).
    refused: u64,
}

impl UnwindRules {
    /// Takes the map from the loaded programs (which unwind by it when
    /// loaded with `LoadOptions::unwind_rules`).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf.take_map("UNWIND_RULES").context("UNWIND_RULES map missing")?;
        Ok(Self {
            map: HashMap::try_from(map)?,
            not_code: Vec::new(),
            written: HashSet::new(),
            refused: 0,
        })
    }

    /// Writes the rules of the steps of one unwind (`Unwinder::rules`) from
    /// the address the kernel side asked about, the first, which is written
    /// again (it may have been evicted since), on.
    pub fn write(&mut self, rules: &[(u64, UnwindRule)]) {
        for (i, (address, rule)) in rules.iter().enumerate() {
            if !self.written.insert(*address) && i > 0 {
                continue;
            }
            if rule.kind == UnwindRule::STOP && !self.not_code.contains(address) {
                self.not_code.push(*address);
            }
            if let Err(e) = self.map.insert(address, rule, 0) {
                self.refused += 1;
                if self.refused == 1 {
                    log::warn!(
                        "unwind rule for {address:#x} not written ({e}); the kernel side's stacks may end there"
                    );
                }
            }
        }
    }

    /// The target's mappings changed: `STOP`s of addresses that are now code
    /// are removed, for the kernel side to ask about them again.
    pub fn modules_changed(&mut self, modules: &ProcessModules) {
        let map = &mut self.map;
        self.not_code.retain(|address| {
            if !modules.is_code(*address) {
                return true;
            }
            let _ = map.remove(address);
            false
        });
    }

    /// Another program (exec): its addresses mean other code.
    pub fn forget_all(&mut self) {
        let keys: Vec<u64> = self.map.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.map.remove(&key);
        }
        self.not_code.clear();
        self.written.clear();
    }
}
