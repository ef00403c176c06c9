//! Flame graph (SVG) of outstanding bytes by stack, drawn by inferno from the
//! folded stacks. Frames on the stack of a leaking site are red, growing
//! orange, plateau yellow; the rest (stable, or no verdict) keep inferno's
//! green-blue memory palette.

use std::collections::HashMap;

use inferno::flamegraph::{
    self,
    color::{BackgroundColor, BasicPalette, Color, PaletteMap},
    Options, Palette,
};

use super::{folded, human_bytes, plural, Report, Verdict};

pub fn render(report: &Report) -> anyhow::Result<Vec<u8>> {
    let t = &report.target;
    let title = format!("leakscope: outstanding memory of PID {} `{}`", t.pid, t.command);
    let totals = &report.totals;
    let mut subtitle = format!(
        "{} in {} at {} sites after {:.1} s ({} mode)",
        human_bytes(totals.outstanding_bytes),
        plural(totals.outstanding_allocations, "allocation"),
        report.site_count(),
        report.duration_s,
        report.mode,
    );
    if report.sites.iter().any(|s| s.verdict.is_some()) {
        subtitle.push_str(". Red: leak, orange: growing, yellow: plateau");
    }
    if totals.outstanding_bytes == 0 {
        // inferno draws nothing (and fails) without a non-zero count.
        return Ok(empty_svg(&format!("{title}: no outstanding allocations")).into_bytes());
    }

    let lines: Vec<String> = super::stack_sites(report).iter().map(|s| folded::line(s)).collect();
    let mut palette = verdict_palette(report);
    let mut options = Options::default();
    options.title = title;
    options.subtitle = Some(subtitle);
    options.count_name = "bytes".to_string();
    options.colors = Palette::Basic(BasicPalette::Mem);
    options.bgcolors = Some(BackgroundColor::Grey);
    // The same function gets the same colour in every graph.
    options.hash = true;
    options.palette_map = Some(&mut palette);
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)?;
    Ok(svg)
}

/// Colours for the frames of sites with a growth verdict. A frame shared by
/// several sites (`main`) takes the most severe one: it is on that path.
fn verdict_palette(report: &Report) -> PaletteMap {
    let mut severity: HashMap<String, Verdict> = HashMap::new();
    for site in &report.sites {
        let Some(verdict @ (Verdict::Leak | Verdict::Growing | Verdict::Plateau)) = site.verdict else {
            continue;
        };
        for frame in folded::stack(site) {
            // Verdicts are declared most severe first.
            let worst = severity.entry(frame).or_insert(verdict);
            *worst = (*worst).min(verdict);
        }
    }
    let mut palette = PaletteMap::default();
    for (frame, verdict) in severity {
        let color = verdict_color(verdict, &frame);
        palette.insert(frame, color);
    }
    palette
}

/// A hue per verdict, its shade varied by name so that neighbours stay apart.
fn verdict_color(verdict: Verdict, name: &str) -> Color {
    let v = name
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 48;
    let v = v as u8;
    match verdict {
        Verdict::Leak => Color {
            r: 215 + v / 2,
            g: 40 + v,
            b: 40 + v,
        },
        Verdict::Growing => Color {
            r: 245,
            g: 135 + v,
            b: 30,
        },
        _ => Color {
            r: 235,
            g: 200 + v / 2,
            b: 50,
        },
    }
}

fn empty_svg(message: &str) -> String {
    let escaped = message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"600\" y=\"36\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"15\">{escaped}</text>\
         </svg>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{sample_report, without_analysis};
    use super::*;

    fn parse(svg: &[u8]) -> String {
        let text = String::from_utf8(svg.to_vec()).expect("UTF-8 SVG");
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        roxmltree::Document::parse_with_options(&text, options).expect("the SVG is well-formed XML");
        text
    }

    /// The fill of the frame rectangle whose tooltip starts with `name (`.
    fn fill_of(svg: &str, name: &str) -> String {
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(svg, options).unwrap();
        let frame = doc
            .descendants()
            .filter(|n| n.has_tag_name("g"))
            .find(|g| {
                g.children()
                    .any(|c| c.has_tag_name("title") && c.text().is_some_and(|t| t.starts_with(&format!("{name} ("))))
            })
            .unwrap_or_else(|| panic!("no frame {name}"));
        let rect = frame
            .children()
            .find(|c| c.has_tag_name("rect"))
            .expect("a frame has a rect");
        rect.attribute("fill").expect("a rect has a fill").to_string()
    }

    #[test]
    fn draws_every_function_colored_by_verdict() {
        let svg = parse(&render(&sample_report()).unwrap());
        for name in [
            "main",
            "handle_request",
            "cache_insert",
            "parse_config",
            "[stack lost]",
            "[mmap]",
        ] {
            assert!(svg.contains(&format!("{name} (")), "no frame {name}");
        }
        assert!(
            svg.contains("./app --mode=a&amp;b &lt;cfg&gt;"),
            "title with the command"
        );
        assert!(svg.contains("Red: leak"), "legend");
        // cache_insert leaks; parse_config is stable, so not red
        let rgb = |verdict, name| {
            let c = verdict_color(verdict, name);
            format!("rgb({},{},{})", c.r, c.g, c.b)
        };
        assert_eq!(fill_of(&svg, "cache_insert"), rgb(Verdict::Leak, "cache_insert"));
        assert_eq!(
            fill_of(&svg, "main"),
            rgb(Verdict::Leak, "main"),
            "main is on the leak's path"
        );
        let stable = fill_of(&svg, "parse_config");
        for verdict in [Verdict::Leak, Verdict::Growing, Verdict::Plateau] {
            assert_ne!(
                stable,
                rgb(verdict, "parse_config"),
                "stable frames use the neutral palette"
            );
        }
    }

    #[test]
    fn draws_without_verdicts_and_without_sites() {
        let svg = parse(&render(&without_analysis(sample_report())).unwrap());
        assert!(svg.contains("cache_insert ("));
        assert!(!svg.contains("Red: leak"));

        let mut empty = sample_report();
        empty.sites.clear();
        empty.totals.outstanding_bytes = 0;
        let svg = parse(&render(&empty).unwrap());
        assert!(svg.contains("no outstanding allocations"));
    }
}
