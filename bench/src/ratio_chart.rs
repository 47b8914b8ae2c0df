//! The PNG bar chart of a peers results file: one bar per figure, ours divided by the peer's, with the
//! peer at 1.0. Every figure of `make bench-peers` is lower-is-better (memory, CPU, wall time,
//! rollouts), so a bar left of 1.0 is a lead.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// One bar: a figure's name (with the peer it is measured against) and ours / the peer's.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub ratio: f64,
}

/// The bars of every table row of a results file whose last cell is a ratio (`| figure | ours | Peer … |
/// 0.32 |`); rows without one (`—`), headers and separators are skipped.
pub fn bars_from_markdown(text: &str) -> Vec<Bar> {
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split('|')
                .map(str::trim)
                .collect();
            let [figure, _ours, peer, ratio] = cells[..] else {
                return None;
            };
            let ratio: f64 = ratio.parse().ok().filter(|r: &f64| r.is_finite())?;
            let peer = peer.split_whitespace().next().unwrap_or_default();
            Some(Bar {
                label: format!("{figure} (vs {peer})"),
                ratio,
            })
        })
        .collect()
}

const WIDTH: u32 = 1200;
const LABELS: i32 = 560;
const ROW: i32 = 30;
const TOP: i32 = 70;
const BOTTOM: i32 = 50;

/// Draws `bars` as a horizontal bar chart into the PNG `path`.
pub fn write_png(path: &Path, title: &str, bars: &[Bar]) -> anyhow::Result<()> {
    anyhow::ensure!(!bars.is_empty(), "no figure with a ratio to draw");
    // ab_glyph has no system fonts: the chart's only face is DejaVu Sans, embedded by the `dejavu` crate.
    let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let rows = i32::try_from(bars.len())?;
    let height = u32::try_from(TOP + rows * ROW + BOTTOM)?;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let text = |size| ("sans-serif", size).into_font().color(&BLACK);
    root.draw(&Text::new(title.to_owned(), (20, 15), text(22)))
        .map_err(draw)?;
    root.draw(&Text::new(
        "ours ÷ the peer's, lower is better; 1.0 = the peer".to_owned(),
        (20, 42),
        text(15),
    ))
    .map_err(draw)?;

    let max = bars.iter().map(|b| b.ratio).fold(1.5_f64, f64::max) * 1.1;
    let plot_width = f64::from(i32::try_from(WIDTH)? - LABELS - 30);
    let x = |r: f64| LABELS + (r / max * plot_width) as i32;
    for (i, bar) in bars.iter().enumerate() {
        let top = TOP + i32::try_from(i)? * ROW;
        root.draw(&Text::new(bar.label.clone(), (10, top + 6), text(14)))
            .map_err(draw)?;
        let colour = if bar.ratio < 1.0 {
            RGBColor(46, 139, 87)
        } else {
            RGBColor(214, 96, 77)
        };
        root.draw(&Rectangle::new(
            [
                (LABELS, top + 4),
                (x(bar.ratio).max(LABELS + 1), top + ROW - 4),
            ],
            colour.filled(),
        ))
        .map_err(draw)?;
        root.draw(&Text::new(
            format!("{:.2}", bar.ratio),
            (x(bar.ratio) + 6, top + 6),
            text(14),
        ))
        .map_err(draw)?;
    }
    let bottom = TOP + rows * ROW;
    let parity = x(1.0);
    root.draw(&PathElement::new(
        vec![(parity, TOP - 4), (parity, bottom + 4)],
        BLACK.stroke_width(2),
    ))
    .map_err(draw)?;
    root.draw(&Text::new(
        "1.0 (the peer)".to_owned(),
        (parity - 45, bottom + 12),
        text(14),
    ))
    .map_err(draw)?;
    root.draw(&PathElement::new(
        vec![(LABELS, TOP - 4), (LABELS, bottom + 4)],
        BLACK.stroke_width(1),
    ))
    .map_err(draw)?;
    root.present().map_err(draw)?;
    drop(root);
    std::fs::metadata(path).with_context(|| format!("{} was not written", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESULTS: &str = "\
# Side by side

| figure (same cluster, same objects, A/B rounds) | ours: median (min–max) | peer: median (min–max) | ratio |
|---|---|---|---|
| redeploy RSS, 1 Deployment | 18.2 MiB (18.0–18.2) | Reloader 102.7 MiB (93.9–102.7) | 0.18 |
| redeploy rollouts for 3 writes within 1 s | 1.0  (1.0–1.0) | Reloader 3.0  (3.0–3.0) | — |

| figure | ours | peer | ratio |
|---|---|---|---|
| pack: upgrade 100, CPU | 17.8 s (17.3–17.8) | Flux 7.9 s (7.6–7.9) | 2.26 |
";

    #[test]
    fn every_row_with_a_ratio_is_a_bar_named_with_its_peer() {
        assert_eq!(
            bars_from_markdown(RESULTS),
            vec![
                Bar {
                    label: "redeploy RSS, 1 Deployment (vs Reloader)".into(),
                    ratio: 0.18
                },
                Bar {
                    label: "pack: upgrade 100, CPU (vs Flux)".into(),
                    ratio: 2.26
                },
            ]
        );
    }

    #[test]
    fn the_chart_is_a_png_as_tall_as_its_bars() {
        let dir = std::env::temp_dir().join(format!("ratio-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("peers.png");
        write_png(&path, "test", &bars_from_markdown(RESULTS)).unwrap();
        let png = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        assert_eq!(
            (size(16), size(20)),
            (WIDTH, (TOP + 2 * ROW + BOTTOM) as u32)
        );
        assert!(write_png(&path, "test", &[]).is_err());
    }
}
