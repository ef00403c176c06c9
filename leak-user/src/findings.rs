//! One finding per leak: sites grouped by the application code that made them.
//!
//! One leak often shows as several sites: the same JS function at two JIT
//! tiers (different return addresses below it, and no line in optimized
//! code where V8 keeps none), a library function that
//! allocates at several addresses inside itself (zlib's `deflateInit2_`,
//! glibc's `getdelim`), or different allocators reached from one call. What
//! the reader acts on is the first frame in the application's own code, so
//! sites are grouped by that frame's function and line, and a finding is
//! titled by it. Memory of the runtime alone (the C library, the dynamic
//! loader, node and V8) is a finding only while it grows.
//!
//! Memory allocated on behalf of another live block (a site `owned_by`
//! another: node's zlib state, allocated on the thread pool where no JS
//! frame says whose stream it is) is part of its owner's finding.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::analyze::{analyze_site, GrowthPolicy, SiteGrowth};
use crate::heap::Kind;
use crate::report::{file_name, Frame, Report, Series, Site, Verdict};
use crate::symbolize::JIT_MODULE;
use crate::v8::JsFrame;

/// Modules under these directories are the system's (libc, libstdc++,
/// libuv, zlib, ...), not the application's.
const SYSTEM_DIRS: &[&str] = &[
    "/lib/",
    "/lib32/",
    "/lib64/",
    "/usr/lib/",
    "/usr/lib32/",
    "/usr/lib64/",
    "/usr/libexec/",
];

/// Headers of the system's libraries: their inline functions (glibc's
/// `getline`, libstdc++'s containers) are compiled into the application's
/// module but are library code.
const SYSTEM_HEADER_DIRS: &[&str] = &["/usr/include/", "/usr/lib/gcc/"];

/// V8's own scratch memory: its optimizing compiler's zones and its garbage
/// collectors' worklists. It is freed and taken again all the time, and a
/// page fault cannot see the frees: the pages it touches anew make a
/// `pages_touched` site grow by construction (growth mode), while the JS
/// heap it works for is judged by the `v8_heap` sites and the census.
const V8_SCRATCH: &[&str] = &[
    "v8::internal::compiler::",
    "v8::internal::Zone::",
    "heap::base::Worklist",
    "v8::internal::MarkCompactCollector::",
    "v8::internal::Scavenger",
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    /// The application frame, as "function (file:line)"; for runtime memory,
    /// the innermost named frame and its module.
    pub title: String,
    /// The first frame in the application's own code; None for runtime memory.
    pub frame: Option<Frame>,
    /// The most severe verdict of its sites.
    pub verdict: Option<Verdict>,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Sum of its sites' fitted growth rates.
    pub growth_bytes_per_s: Option<f64>,
    /// Indices into the report's `sites`, largest first.
    pub sites: Vec<usize>,
}

/// Sites grouped by the code that made them: every site in exactly one
/// group, ranked like findings. `check` judges these.
pub fn groups(report: &Report) -> Vec<Finding> {
    let is_node = report.node.is_some();
    let app_frames: Vec<Option<&Frame>> = report
        .sites
        .iter()
        .map(|site| application_frame(site, is_node).map(|i| &*site.frames[i]))
        .collect();
    let lined = lined_js_frames(report, &app_frames);
    let own_keys: Vec<(String, String, Option<&Frame>)> = report
        .sites
        .iter()
        .enumerate()
        .map(|(index, site)| {
            let app = app_frames[index].map(|frame| with_known_line(site, frame, &lined));
            let (key, title) = match app {
                Some(frame) => (
                    format!("app\0{:?}\0{:?}\0{:?}", frame.function, frame.file, frame.line),
                    frame_title(frame),
                ),
                None => runtime_key(site),
            };
            (key, title, app)
        })
        .collect();
    let own_keys = with_moved_frames_joined(report, own_keys);
    let mut by_key: HashMap<String, Finding> = HashMap::new();
    for (index, site) in report.sites.iter().enumerate() {
        let (key, title, app) = &own_keys[owner_root(report, index)];
        let finding = by_key.entry(key.clone()).or_insert_with(|| Finding {
            title: title.clone(),
            frame: app.cloned(),
            verdict: None,
            outstanding_bytes: 0,
            outstanding_allocations: 0,
            growth_bytes_per_s: None,
            sites: Vec::new(),
        });
        finding.outstanding_bytes += site.outstanding_bytes;
        finding.outstanding_allocations += site.outstanding_allocations;
        finding.verdict = most_severe(finding.verdict, site.verdict);
        if let Some(rate) = site.growth_bytes_per_s {
            *finding.growth_bytes_per_s.get_or_insert(0.0) += rate;
        }
        finding.sites.push(index);
    }
    let mut groups: Vec<Finding> = by_key.into_values().collect();
    for group in &mut groups {
        group
            .sites
            .sort_by_key(|&i| std::cmp::Reverse(report.sites[i].outstanding_bytes));
    }
    groups.sort_by(|a, b| {
        severity(a.verdict)
            .cmp(&severity(b.verdict))
            .then(growth(b).total_cmp(&growth(a)))
            .then(b.outstanding_bytes.cmp(&a.outstanding_bytes))
            .then(a.title.cmp(&b.title))
    });
    groups
}

/// The findings of a report: groups that hold a leak or may. Memory that
/// stays flat (`stable`, `plateau`) is not one, nor are runtime memory and
/// file-backed mappings (loaded libraries) unless they grow.
///
/// A group is also judged by the sum of its sites' series: one leak split
/// over sites that each live part of the hunt (a JS function recompiled at
/// another JIT tier starts a new stack) has pieces that each grow and stop,
/// a plateau apiece, while their sum keeps growing. Such a group keeps all its
/// sites, and its rate is the slope of that sum. Only groups with a piece that
/// rose (plateau, growing, leak) are summed.
pub fn of(report: &Report) -> Vec<Finding> {
    groups(report)
        .into_iter()
        .filter_map(|mut group| {
            let scratch = |&i: &usize| is_v8_scratch_pages(&report.sites[i]);
            if group.frame.is_none() && group.sites.iter().all(scratch) {
                return None;
            }
            // Only pieces that rose themselves can add up to growth: young
            // sites of healthy churn (insufficient data) must not.
            let a_piece_rose = group.sites.iter().any(|&i| {
                matches!(
                    report.sites[i].verdict,
                    Some(Verdict::Leak | Verdict::Growing | Verdict::Plateau)
                )
            });
            let summed = summed_growth(report, &group.sites).filter(|_| a_piece_rose);
            let summed_grows = summed
                .as_ref()
                .is_some_and(|g| matches!(g.verdict, Verdict::Leak | Verdict::Growing));
            if !summed_grows {
                group
                    .sites
                    .retain(|&i| is_finding(&report.sites[i], group.frame.is_some()));
            }
            let sites: Vec<&Site> = group.sites.iter().map(|&i| &report.sites[i]).collect();
            if sites.is_empty() {
                return None;
            }
            group.outstanding_bytes = sites.iter().map(|s| s.outstanding_bytes).sum();
            group.outstanding_allocations = sites.iter().map(|s| s.outstanding_allocations).sum();
            group.verdict = sites.iter().fold(None, |v, s| most_severe(v, s.verdict));
            let rates: Vec<f64> = sites.iter().filter_map(|s| s.growth_bytes_per_s).collect();
            group.growth_bytes_per_s = (!rates.is_empty()).then(|| rates.iter().sum());
            if let Some(summed) = summed.filter(|_| summed_grows) {
                group.verdict = most_severe(group.verdict, Some(summed.verdict));
                group.growth_bytes_per_s = summed.slope_bytes_per_s.or(group.growth_bytes_per_s);
            }
            Some(group)
        })
        .collect()
}

/// A site with a JS frame that a mark-compact moved before it was named
/// (`JsFrame::MOVED`) inside its application frame, or without one, lost
/// what may be its own application frame (a caller further out, such as
/// a harness's, is not it), though its code is known up to the first JS
/// frame: it joins the application finding of the sites with the same
/// native frames up to there, when those are all one finding (it keeps its
/// own key when they are several, or none).
fn with_moved_frames_joined<'r>(
    report: &'r Report,
    mut keys: Vec<(String, String, Option<&'r Frame>)>,
) -> Vec<(String, String, Option<&'r Frame>)> {
    let is_node = report.node.is_some();
    let native_prefix = |site: &Site| -> Vec<Option<String>> {
        site.frames
            .iter()
            .take_while(|f| f.module.as_deref() != Some(JIT_MODULE))
            .map(|f| f.function.clone())
            .collect()
    };
    let moved_inside_application = |site: &Site| {
        let application = application_frame(site, is_node).unwrap_or(site.frames.len());
        site.frames[..application]
            .iter()
            .any(|f| f.function.as_deref() == Some(JsFrame::MOVED))
    };
    let moved: Vec<bool> = report.sites.iter().map(moved_inside_application).collect();
    // Per native prefix: the named sites below it, while they are one finding.
    let mut named_by_prefix: HashMap<Vec<Option<String>>, Option<Vec<usize>>> = HashMap::new();
    for (index, site) in report.sites.iter().enumerate() {
        if keys[index].2.is_none() || moved[index] {
            continue;
        }
        let named = named_by_prefix.entry(native_prefix(site)).or_insert(Some(Vec::new()));
        match named {
            Some(sites) if sites.first().is_some_and(|&k| keys[k].0 != keys[index].0) => *named = None,
            Some(sites) => sites.push(index),
            None => {}
        }
    }
    let same_code = |a: &Frame, b: &Frame| (&a.function, &a.file, a.line) == (&b.function, &b.file, b.line);
    for (index, site) in report.sites.iter().enumerate() {
        if !moved[index] {
            continue;
        }
        let Some(Some(named)) = named_by_prefix.get(&native_prefix(site)) else {
            continue;
        };
        // What is left of its application code must be a caller of theirs.
        let is_their_caller = keys[index].2.is_none_or(|own| {
            named
                .iter()
                .any(|&n| report.sites[n].frames.iter().any(|f| same_code(f, own)))
        });
        if is_their_caller {
            keys[index] = keys[named[0]].clone();
        }
    }
    keys
}

/// The site at the top of `index`'s owners (itself if it has none): memory
/// allocated on behalf of a block is the leak of whatever holds the block.
fn owner_root(report: &Report, index: usize) -> usize {
    let mut root = index;
    for _ in 0..report.sites.len() {
        match report.sites[root].owned_by {
            Some(owner) if owner < report.sites.len() && owner != index => root = owner,
            _ => break,
        }
    }
    root
}

/// The growth of the sum of several sites' series (None for one site, whose
/// own verdict stands). Each site holds its last sampled value between its
/// samples and nothing before its first. The report keeps no ages, so the
/// sum can be `growing` but never `leak`.
fn summed_growth(report: &Report, sites: &[usize]) -> Option<SiteGrowth> {
    let series: Vec<&Series> = sites
        .iter()
        .filter_map(|&i| report.sites[i].series.as_ref())
        .filter(|s| !s.t_s.is_empty())
        .collect();
    if series.len() < 2 {
        return None;
    }
    let mut t_s: Vec<f64> = series.iter().flat_map(|s| s.t_s.iter().copied()).collect();
    t_s.sort_by(f64::total_cmp);
    t_s.dedup();
    let bytes = t_s
        .iter()
        .map(|&t| {
            series
                .iter()
                .map(|s| match s.t_s.partition_point(|&ts| ts <= t) {
                    0 => 0,
                    n => s.bytes.get(n - 1).copied().unwrap_or(0),
                })
                .sum()
        })
        .collect();
    let sum = Series {
        t_s,
        bytes,
        allocations: Vec::new(),
    };
    Some(analyze_site(&sum, &[], 0.0, &GrowthPolicy::default()))
}

/// The functions that called `frame` on a site's stack, innermost first:
/// what two JIT tiers of one call share when their addresses, lines and
/// inlined callees differ.
fn callers<'r>(site: &'r Site, frame: &Frame) -> Vec<&'r str> {
    let at = site.frames.iter().position(|f| std::ptr::eq(&**f, frame));
    site.frames[at.map_or(site.frames.len(), |i| i + 1)..]
        .iter()
        .filter_map(|f| f.function.as_deref())
        .collect()
}

/// A lined JS application frame and the callers it was seen with.
struct LinedFrame<'r> {
    frame: &'r Frame,
    paths: Vec<Vec<&'r str>>,
}

/// JS application frames with a line, by function and script: the lines
/// each function was seen at, with the callers of each.
fn lined_js_frames<'r>(
    report: &'r Report,
    app_frames: &[Option<&'r Frame>],
) -> HashMap<(&'r str, &'r str), Vec<LinedFrame<'r>>> {
    let mut lined: HashMap<(&str, &str), Vec<LinedFrame>> = HashMap::new();
    for (site, frame) in report.sites.iter().zip(app_frames) {
        let Some(frame) = frame else { continue };
        if let (Some(JIT_MODULE), Some(function), Some(file), Some(line)) =
            (frame.module.as_deref(), &frame.function, &frame.file, frame.line)
        {
            let frames = lined.entry((function, file)).or_default();
            let index = match frames.iter().position(|f| f.frame.line == Some(line)) {
                Some(index) => index,
                None => {
                    frames.push(LinedFrame {
                        frame,
                        paths: Vec::new(),
                    });
                    frames.len() - 1
                }
            };
            let path = callers(site, frame);
            if !frames[index].paths.contains(&path) {
                frames[index].paths.push(path);
            }
        }
    }
    lined
}

/// A JS frame of optimized code may have no line where the same function's
/// interpreted frames have one: one call at two JIT tiers is one leak. The
/// line is taken when the function was seen at a single line, or else at a
/// single line with the same callers (anonymous functions of one script share
/// a name).
fn with_known_line<'r>(
    site: &Site,
    frame: &'r Frame,
    lined: &'r HashMap<(&str, &str), Vec<LinedFrame<'r>>>,
) -> &'r Frame {
    let (Some(JIT_MODULE), Some(function), Some(file), None) =
        (frame.module.as_deref(), &frame.function, &frame.file, frame.line)
    else {
        return frame;
    };
    let Some(candidates) = lined.get(&(function.as_str(), file.as_str())) else {
        return frame;
    };
    if let [only] = candidates.as_slice() {
        return only.frame;
    }
    let path = callers(site, frame);
    let mut on_path = candidates.iter().filter(|c| c.paths.contains(&path));
    match (on_path.next(), on_path.next()) {
        (Some(only), None) => only.frame,
        _ => frame,
    }
}

fn is_finding(site: &Site, has_application_frame: bool) -> bool {
    let grows = matches!(site.verdict, Some(Verdict::Leak | Verdict::Growing));
    let file_backed = site.mapping.as_ref().is_some_and(|m| !m.anonymous);
    let flat = matches!(site.verdict, Some(Verdict::Stable | Verdict::Plateau));
    grows || (has_application_frame && !file_backed && !flat)
}

/// Pages V8's scratch memory touched (see `V8_SCRATCH`).
fn is_v8_scratch_pages(site: &Site) -> bool {
    site.kind == Kind::PagesTouched
        && site.frames.iter().any(|frame| {
            frame
                .function
                .as_deref()
                .is_some_and(|function| V8_SCRATCH.iter().any(|prefix| function.starts_with(prefix)))
        })
}

/// Index of the first frame in the application's own code: outside the
/// system's libraries and the dynamic loader; in a Node target, JS code
/// outside node's own (`node:` scripts), since node's native code is runtime.
pub fn application_frame(site: &Site, is_node: bool) -> Option<usize> {
    site.frames.iter().position(|frame| is_application(frame, is_node))
}

fn is_application(frame: &Frame, is_node: bool) -> bool {
    match frame.module.as_deref() {
        Some(JIT_MODULE) => frame
            .file
            .as_deref()
            .is_some_and(|file| !file.is_empty() && !file.starts_with("node:")),
        Some(module) if module.starts_with('/') => {
            let system_header = frame
                .file
                .as_deref()
                .is_some_and(|file| SYSTEM_HEADER_DIRS.iter().any(|dir| file.starts_with(dir)));
            !is_node && !SYSTEM_DIRS.iter().any(|dir| module.starts_with(dir)) && !is_loader(module) && !system_header
        }
        _ => false,
    }
}

fn is_loader(module: &str) -> bool {
    file_name(module).starts_with("ld-linux")
}

/// Runtime memory is grouped by its innermost named frame outside the
/// allocator's own (libc's wrappers) and outside the C library where a
/// caller is known: addresses inside one function are one.
fn runtime_key(site: &Site) -> (String, String) {
    let allocator_own = |f: &Frame| {
        let function = f.function.as_deref().unwrap_or_default();
        site.allocator.split('/').any(|name| function.contains(name))
    };
    let named: Vec<&Frame> = site
        .frames
        .iter()
        .map(|f| &**f)
        .filter(|f| f.function.is_some())
        .collect();
    // The C library's functions (memset, memcpy, malloc's internals, which
    // touch the pages a page fault reports) work for their caller: the first
    // caller outside it says whose memory this is.
    let in_libc = |f: &Frame| f.module.as_deref().is_some_and(|m| file_name(m).starts_with("libc.so"));
    let Some(frame) = named
        .iter()
        .find(|f| !allocator_own(f) && !in_libc(f))
        .or_else(|| named.iter().find(|f| !allocator_own(f)))
        .or(named.first())
    else {
        let what = if site.frames.is_empty() {
            "[stack lost]"
        } else {
            "[unnamed stack]"
        };
        return (
            format!("runtime\0{what}\0{}", site.kind.name()),
            format!("{what} via {}", site.allocator),
        );
    };
    let function = frame.function.as_deref().unwrap_or_default();
    let module = frame.module.as_deref().map(file_name).unwrap_or("?");
    (
        format!("runtime\0{function}\0{module}\0{}", site.kind.name()),
        format!("{function} in {module} via {}", site.allocator),
    )
}

/// "function (file:line)", the way a reader finds the code.
pub fn frame_title(frame: &Frame) -> String {
    let function = frame.function.as_deref().unwrap_or(&frame.address);
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{function} ({}:{line})", file_name(file)),
        // Optimized JS code where V8 kept no position: the script still says where.
        (Some(file), None) if !file.is_empty() => format!("{function} ({})", file_name(file)),
        _ => function.to_string(),
    }
}

/// The frames a reader needs: the allocator's (up to the application frame)
/// and the application's; runtime frames around them are folded into counts.
/// A stack without an application frame shows its first few frames.
pub enum Shown<'a> {
    Frame(&'a Frame),
    /// This many runtime frames, not shown.
    Folded(usize),
}

/// Frames shown of a stack without an application frame.
const RUNTIME_FRAMES_SHOWN: usize = 4;

pub fn shown_frames(site: &Site, is_node: bool, full_stacks: bool) -> Vec<Shown<'_>> {
    if full_stacks {
        return site.frames.iter().map(|f| Shown::Frame(f)).collect();
    }
    let first_app = application_frame(site, is_node);
    let keep = |i: usize, frame: &Frame| match first_app {
        Some(first) => i <= first || is_application(frame, is_node),
        None => i < RUNTIME_FRAMES_SHOWN,
    };
    let mut shown = Vec::new();
    for (i, frame) in site.frames.iter().enumerate() {
        if keep(i, frame) {
            shown.push(Shown::Frame(frame));
        } else if let Some(Shown::Folded(n)) = shown.last_mut() {
            *n += 1;
        } else {
            shown.push(Shown::Folded(1));
        }
    }
    shown
}

fn severity(verdict: Option<Verdict>) -> u8 {
    verdict.map_or(Verdict::InsufficientData as u8 + 1, |v| v as u8)
}

fn most_severe(a: Option<Verdict>, b: Option<Verdict>) -> Option<Verdict> {
    if severity(b) < severity(a) {
        b
    } else {
        a
    }
}

fn growth(finding: &Finding) -> f64 {
    finding.growth_bytes_per_s.unwrap_or(f64::NEG_INFINITY)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::report::tests::sample_report;

    fn frame(function: &str, file: Option<&str>, line: Option<u32>, module: &str, address: &str) -> Arc<Frame> {
        Arc::new(Frame {
            address: address.into(),
            function: Some(function.into()),
            file: file.map(Into::into),
            line,
            column: None,
            module: Some(module.into()),
            inlined: false,
        })
    }

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const APP: &str = "/srv/app/bin/server";

    /// Two sites of one leak through two addresses inside `getdelim`, one
    /// other leak, and one stable site.
    fn report() -> Report {
        let mut report = sample_report();
        let template = report.sites[0].clone();
        let site = |bytes, verdict, frames: Vec<Arc<Frame>>| Site {
            outstanding_bytes: bytes,
            verdict,
            frames,
            ..template.clone()
        };
        let main = frame("main", Some("/srv/app/main.c"), Some(40), APP, "0x401000");
        let read_lines = frame("read_lines", Some("/srv/app/main.c"), Some(12), APP, "0x401100");
        report.sites = vec![
            site(
                500,
                Some(Verdict::Leak),
                vec![
                    frame("getdelim", None, None, LIBC, "0x7f01"),
                    read_lines.clone(),
                    main.clone(),
                ],
            ),
            site(
                300,
                Some(Verdict::Growing),
                vec![frame("getdelim", None, None, LIBC, "0x7f22"), read_lines, main.clone()],
            ),
            site(
                100,
                Some(Verdict::InsufficientData),
                vec![
                    frame("other", Some("/srv/app/main.c"), Some(20), APP, "0x401200"),
                    main.clone(),
                ],
            ),
            site(
                900,
                Some(Verdict::Stable),
                vec![frame("setup", Some("/srv/app/main.c"), Some(30), APP, "0x401300"), main],
            ),
            site(
                50,
                Some(Verdict::InsufficientData),
                vec![frame(
                    "_dl_map_object",
                    None,
                    None,
                    "/usr/lib64/ld-linux-x86-64.so.2",
                    "0x7f33",
                )],
            ),
        ];
        report
    }

    #[test]
    fn one_finding_per_application_frame() {
        let findings = of(&report());
        let titles: Vec<&str> = findings.iter().map(|f| f.title.as_str()).collect();
        assert_eq!(titles, ["read_lines (main.c:12)", "other (main.c:20)"]);
        assert_eq!(findings[0].sites, [0, 1]);
        assert_eq!(findings[0].outstanding_bytes, 800);
        assert_eq!(findings[0].verdict, Some(Verdict::Leak));
        assert_eq!(
            findings[0].frame.as_ref().unwrap().function.as_deref(),
            Some("read_lines")
        );
        // Every site is in one group; flat and runtime memory too.
        let groups = groups(&report());
        assert_eq!(groups.iter().map(|g| g.sites.len()).sum::<usize>(), 5);
        assert!(groups
            .iter()
            .any(|g| g.title == "_dl_map_object in ld-linux-x86-64.so.2 via malloc"));
    }

    #[test]
    fn memory_allocated_on_behalf_of_a_block_is_its_owners_finding() {
        let mut report = report();
        let zlib = "/usr/lib/x86_64-linux-gnu/libz.so.1";
        let state = Site {
            outstanding_bytes: 1000,
            verdict: Some(Verdict::Growing),
            frames: vec![frame("deflateInit2_", None, None, zlib, "0x7f55")],
            ..report.sites[0].clone()
        };
        // zlib state of read_lines's objects (site 0), and of objects the
        // hunt never saw allocated.
        report.sites.push(Site {
            owned_by: Some(0),
            ..state.clone()
        });
        report.sites.push(state);
        let findings = of(&report);
        let titles: Vec<&str> = findings.iter().map(|f| f.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "read_lines (main.c:12)",
                "deflateInit2_ in libz.so.1 via malloc",
                "other (main.c:20)"
            ]
        );
        assert_eq!(findings[0].sites, [5, 0, 1]);
        assert_eq!(findings[0].outstanding_bytes, 1800);
        assert_eq!(findings[1].sites, [6]);
    }

    #[test]
    fn runtime_memory_is_a_finding_only_while_it_grows() {
        let mut report = report();
        report.sites[4].verdict = Some(Verdict::Growing);
        let findings = of(&report);
        assert_eq!(findings.len(), 3);
        assert!(findings[1].frame.is_none());
    }

    #[test]
    fn v8_scratch_pages_are_never_a_finding() {
        let mut report = report();
        report.node = Some(Default::default());
        let node = "/usr/bin/node";
        let zone = |kind| Site {
            kind,
            verdict: Some(Verdict::Growing),
            frames: vec![
                frame("_int_malloc", None, None, LIBC, "0x7f44"),
                frame("v8::internal::Zone::Expand(unsigned long)", None, None, node, "0x1100"),
                frame(
                    "v8::internal::compiler::PipelineImpl::CreateGraph()",
                    None,
                    None,
                    node,
                    "0x1200",
                ),
            ],
            ..report.sites[0].clone()
        };
        report.sites = vec![zone(Kind::PagesTouched), zone(Kind::Malloc)];
        let findings = of(&report);
        // The same stack's malloc'd bytes, still outstanding, stay one.
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].sites, [1]);
    }

    #[test]
    fn runtime_memory_is_titled_by_the_first_caller_outside_the_c_library() {
        let mut report = report();
        report.node = Some(Default::default());
        let node = "/usr/bin/node";
        let template = report.sites[0].clone();
        let fault = |frames: Vec<Arc<Frame>>| Site {
            allocator: "page-faults".into(),
            verdict: Some(Verdict::Growing),
            frames,
            ..template.clone()
        };
        report.sites = vec![
            fault(vec![
                frame("__memset_avx512_unaligned_erms", None, None, LIBC, "0x7f01"),
                frame("deflateInit2_", None, None, node, "0x189ca5e"),
            ]),
            fault(vec![
                frame("__memset_avx512_unaligned_erms", None, None, LIBC, "0x7f01"),
                frame("deflateInit2_", None, None, node, "0x189cb76"),
            ]),
            fault(vec![
                frame("_int_malloc", None, None, LIBC, "0x7f02"),
                frame("__GI___libc_malloc", None, None, LIBC, "0x7f03"),
                frame("AllocForZlib", None, None, node, "0xdbcf83"),
            ]),
            fault(vec![frame("_dl_start", None, None, LIBC, "0x7f04")]),
        ];
        let titles: Vec<String> = of(&report).into_iter().map(|f| f.title).collect();
        assert_eq!(
            titles,
            [
                "deflateInit2_ in node via page-faults",
                "AllocForZlib in node via page-faults",
                "_dl_start in libc.so.6 via page-faults"
            ]
        );
    }

    #[test]
    fn runtime_frames_fold_around_the_application_frames() {
        let report = report();
        let mut site = report.sites[0].clone();
        site.frames
            .push(frame("__libc_start_call_main", None, None, LIBC, "0x7f44"));
        site.frames.push(frame("__libc_start_main", None, None, LIBC, "0x7f55"));
        let shown = shown_frames(&site, false, false);
        let names: Vec<String> = shown
            .iter()
            .map(|s| match s {
                Shown::Frame(f) => f.function.clone().unwrap(),
                Shown::Folded(n) => format!("+{n}"),
            })
            .collect();
        assert_eq!(names, ["getdelim", "read_lines", "main", "+2"]);
        assert_eq!(shown_frames(&site, false, true).len(), 5);
    }

    #[test]
    fn a_stack_whose_js_frames_moved_joins_the_one_finding_of_its_native_frames() {
        let mut report = report();
        report.node = Some(Default::default());
        let node = "/usr/bin/node";
        let new = |address| frame("node::ZlibStream::New", None, None, node, address);
        let js = frame("openCompressor", Some("/srv/zlib.js"), Some(21), JIT_MODULE, "0x3ad1");
        let moved = frame(JsFrame::MOVED, None, None, JIT_MODULE, "0x3ad9");
        let other = frame("other", Some("/srv/zlib.js"), Some(40), JIT_MODULE, "0x3ae1");
        let harness = frame("(anonymous)", Some("/srv/harness.js"), Some(7), JIT_MODULE, "0x3af1");
        let template = report.sites[0].clone();
        let site = |frames| Site {
            verdict: Some(Verdict::Leak),
            frames,
            ..template.clone()
        };
        report.sites = vec![
            site(vec![new("0x10"), js.clone(), harness.clone()]),
            site(vec![new("0x10"), moved.clone()]),
            site(vec![frame("node::Other", None, None, node, "0x20"), moved.clone()]),
            // The caller further out is application code too (a harness).
            site(vec![new("0x10"), moved.clone(), harness.clone()]),
        ];
        let findings = of(&report);
        assert_eq!(findings[0].title, "openCompressor (zlib.js:21)");
        assert_eq!(findings[0].sites, [0, 1, 3]);
        // An application frame that is not a caller of theirs is its own code.
        let mut apart = report.clone();
        apart.sites[3].frames[2] = other.clone();
        assert!(of(&apart)
            .iter()
            .all(|f| !f.sites.contains(&3) || f.title == "other (zlib.js:40)"));
        // Two application findings below the same native frames: no guess.
        report.sites.push(site(vec![new("0x10"), other]));
        let findings = of(&report);
        assert!(findings.iter().all(|f| !f.sites.contains(&1) || f.frame.is_none()));
        assert!(findings
            .iter()
            .all(|f| !f.sites.contains(&3) || f.title == "(anonymous) (harness.js:7)"));
    }

    #[test]
    fn a_js_function_at_two_jit_tiers_is_one_finding() {
        let mut report = report();
        report.node = Some(Default::default());
        let js = |line| frame("openCompressor", Some("/srv/zlib.js"), line, JIT_MODULE, "0x3ad1");
        let other = frame("other", Some("/srv/zlib.js"), None, JIT_MODULE, "0x3ad9");
        let template = report.sites[0].clone();
        report.sites = [js(Some(21)), js(None), other]
            .into_iter()
            .map(|frame| Site {
                verdict: Some(Verdict::Leak),
                frames: vec![frame],
                ..template.clone()
            })
            .collect();
        let titles: Vec<String> = of(&report).into_iter().map(|f| f.title).collect();
        assert_eq!(titles, ["openCompressor (zlib.js:21)", "other (zlib.js)"]);
        assert_eq!(of(&report)[0].sites, [0, 1]);
        // Seen at two lines, a line-less frame cannot be placed: its own finding.
        report.sites[2].frames[0] = js(Some(30));
        assert_eq!(of(&report).len(), 3);
    }

    #[test]
    fn a_leak_split_over_sites_that_each_stop_is_judged_by_their_sum() {
        let mut report = report();
        let template = report.sites[0].clone();
        // One function's allocations move to a new stack every 4 s (another
        // JIT tier): each piece grows 4 s and stays, a plateau on its own.
        let piece = |start: usize| {
            let t_s: Vec<f64> = (0..16).map(|t| t as f64).collect();
            let bytes: Vec<u64> = (0..16usize)
                .map(|t| (t.clamp(start, start + 4) - start) as u64 * 65536)
                .collect();
            Site {
                verdict: Some(Verdict::Plateau),
                outstanding_bytes: 4 * 65536,
                growth_bytes_per_s: Some(0.0),
                series: Some(Series {
                    allocations: vec![0; t_s.len()],
                    t_s,
                    bytes,
                }),
                ..template.clone()
            }
        };
        report.sites = vec![piece(0), piece(4), piece(8), piece(12)];
        let findings = of(&report);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].sites.len(), 4);
        assert_eq!(findings[0].verdict, Some(Verdict::Growing));
        assert_eq!(findings[0].outstanding_bytes, 16 * 65536);
        assert!((findings[0].growth_bytes_per_s.unwrap() - 65536.0).abs() < 1.0);
        // Pieces too young for a verdict of their own add up to nothing.
        let young: Vec<Site> = report
            .sites
            .iter()
            .map(|s| Site {
                verdict: Some(Verdict::InsufficientData),
                ..s.clone()
            })
            .collect();
        let young_report = Report {
            sites: young,
            ..report.clone()
        };
        assert_eq!(of(&young_report)[0].verdict, Some(Verdict::InsufficientData));
        // The same pieces, all at once: a cache that filled, not a finding.
        for site in &mut report.sites {
            let series = site.series.as_mut().unwrap();
            series.bytes = (0..16u64).map(|t| t.min(4) * 65536).collect();
        }
        assert!(of(&report).is_empty(), "{:?}", of(&report));
    }

    #[test]
    fn js_frames_of_the_application_are_its_code_in_a_node_target() {
        let mut js = frame("retainBuffers", Some("/srv/app.js"), Some(12), JIT_MODULE, "0x3ad1");
        assert!(is_application(&js, true));
        Arc::make_mut(&mut js).file = Some("node:internal/timers".into());
        assert!(!is_application(&js, true));
        assert!(!is_application(
            &frame("uv_run", None, None, "/usr/bin/node", "0x1"),
            true
        ));
        assert!(is_application(
            &frame("uv_run", None, None, "/usr/bin/node", "0x1"),
            false
        ));
    }
}
