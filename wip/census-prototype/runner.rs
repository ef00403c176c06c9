
/// Takes heap censuses of a Node target after its full GCs, one at a time,
/// on a thread of their own: the target is never stopped, and a census a
/// full GC overlapped is dropped (its objects may have moved).
struct CensusRunner {
    pid: u32,
    layout: std::sync::Arc<v8::census::CensusLayout>,
    running: Option<RunningCensus>,
    /// Full GCs seen when the last census started.
    full_gcs_at_last: u64,
    last_started: Option<Instant>,
    series: census_series::CensusSeries,
}

struct RunningCensus {
    thread: std::thread::JoinHandle<Result<CensusResult>>,
    full_gcs: u64,
    t_s: f64,
}

type CensusResult = (v8::census::Census, std::collections::HashMap<v8::census::GroupKey, Vec<String>>);

/// Least time between two censuses.
const CENSUS_PERIOD: Duration = Duration::from_secs(2);
/// Time left after a full GC for V8 to finish sweeping its pages.
const SWEEP_WAIT_S: f64 = 0.2;

impl CensusRunner {
    /// A runner for a Node target; None (with the reason kept for the
    /// report) when its V8 is not one the census knows.
    fn new(pid: u32, node: &crate::lookup::ModuleRef, namer: Option<&v8::JsNamer>) -> CensusSeriesOrRunner {
        let Some(namer) = namer else {
            return CensusSeriesOrRunner::Unavailable("its V8 is not one leakscope knows".to_string());
        };
        match v8::census::CensusLayout::read(&node.open_path, namer.layout().clone()) {
            Ok(layout) => CensusSeriesOrRunner::Runner(CensusRunner {
                pid,
                layout: std::sync::Arc::new(layout),
                running: None,
                full_gcs_at_last: 0,
                last_started: None,
                series: census_series::CensusSeries::default(),
            }),
            Err(e) => CensusSeriesOrRunner::Unavailable(format!("{e:#}")),
        }
    }

    /// Collects a finished census and starts the next one when a full GC
    /// has ended since the last.
    fn tick(&mut self, stats: &node::NodeStats, t_s: f64) {
        if self.running.as_ref().is_some_and(|r| r.thread.is_finished()) {
            self.collect(stats);
        }
        let after_gc = stats
            .live_after_full
            .last()
            .is_some_and(|(gc_t, _)| t_s - gc_t >= SWEEP_WAIT_S);
        let due = self.last_started.is_none_or(|at| at.elapsed() >= CENSUS_PERIOD);
        if self.running.is_none() && stats.full_gcs > self.full_gcs_at_last && after_gc && due && !stats.gc_in_progress() {
            self.start(stats.full_gcs, t_s);
        }
    }

    fn start(&mut self, full_gcs: u64, t_s: f64) {
        let (pid, layout) = (self.pid, self.layout.clone());
        let previous = self.series.last_counts();
        self.full_gcs_at_last = full_gcs;
        self.last_started = Some(Instant::now());
        let thread = std::thread::spawn(move || -> Result<CensusResult> {
            let namer = || v8::JsNamer::new(pid, None, layout.frames.clone());
            let census = v8::census::take(pid, &layout, namer(), v8::census::Budget::default())?;
            let targets = census_series::growing(&census, &previous);
            let paths = if targets.is_empty() {
                Default::default()
            } else {
                v8::retainers::paths(pid, &layout, namer(), &targets)?
            };
            Ok((census, paths))
        });
        self.running = Some(RunningCensus { thread, full_gcs, t_s });
    }

    /// Waits for the running census and keeps it if no full GC overlapped it.
    fn collect(&mut self, stats: &node::NodeStats) {
        let Some(running) = self.running.take() else {
            return;
        };
        match running.thread.join() {
            Ok(Ok(_)) if stats.full_gcs != running.full_gcs || stats.gc_in_progress() => {
                self.series.drop_census("a GC ran during it".to_string());
            }
            Ok(Ok((census, paths))) => {
                log::info!(
                    "heap census at {:.1} s: {} objects, {} bytes in {:.3} s",
                    running.t_s,
                    census.objects,
                    census.live_bytes,
                    census.duration.as_secs_f64()
                );
                self.series.add(running.t_s, census);
                self.series.set_retainers(paths);
            }
            Ok(Err(e)) => self.series.drop_census(format!("{e:#}")),
            Err(_) => self.series.drop_census("the census thread panicked".to_string()),
        }
    }

    /// The series, after the running census (if any) is collected.
    fn finish(mut self, stats: &node::NodeStats) -> census_series::CensusSeries {
        self.collect(stats);
        self.series
    }
}

enum CensusSeriesOrRunner {
    Runner(CensusRunner),
    Unavailable(String),
}
