//! SVG charts drawn with plotters' SVG backend into a String, for inlining into the HTML report.
//! Text stays text (`<text>` elements the browser lays out with its own fonts), so no font files
//! are needed here.

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub type ChartResult = std::result::Result<String, String>;

pub const BEFORE: RGBColor = RGBColor(150, 160, 175);
pub const AFTER: RGBColor = RGBColor(37, 99, 180);
const INK: RGBColor = RGBColor(40, 44, 52);
const FONT: &str = "sans-serif";

/// Colours of the line series (and the HTML legend swatches).
pub fn series_color(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(37, 99, 180),
        RGBColor(214, 96, 39),
        RGBColor(46, 150, 80),
        RGBColor(190, 50, 60),
        RGBColor(130, 90, 180),
        RGBColor(140, 100, 75),
        RGBColor(210, 100, 170),
        RGBColor(110, 110, 110),
        RGBColor(170, 170, 40),
        RGBColor(30, 170, 190),
    ];
    C[i % C.len()]
}

pub fn css(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// Inline SVG needs no namespace declaration; dropping it keeps the page free of any address.
fn finish(svg: String, label: &str) -> String {
    svg.replacen(
        " xmlns=\"http://www.w3.org/2000/svg\"",
        &format!(
            " class=\"chart\" role=\"img\" aria-label=\"{}\"",
            crate::render::esc(label)
        ),
        1,
    )
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("chart: {e:?}")
}

/// The vertical axis of a bar chart: `n` bands of height 1, a tick (and a label) at each centre.
struct Bands(usize);

impl Ranged for Bands {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = v / self.0.max(1) as f64;
        limit.0 + ((limit.1 - limit.0) as f64 * t).round() as i32
    }
    fn key_points<H: KeyPointHint>(&self, _: H) -> Vec<f64> {
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }
    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.0 as f64
    }
}

/// One series of bars: a colour, a value per category (`None`: no bar, marked "none").
pub struct BarSeries {
    pub color: RGBColor,
    pub values: Vec<Option<f64>>,
}

/// Horizontal bars, one band per category (top to bottom in order), one bar per series in a band,
/// each bar labelled with its value.
pub struct Bars<'a> {
    pub title: String,
    pub categories: Vec<String>,
    pub series: Vec<BarSeries>,
    /// each band holds only the series that have a value there, one bar filling the band
    pub single_bar_per_band: bool,
    pub x_desc: String,
    pub fmt: &'a dyn Fn(f64) -> String,
    /// tick labels (defaults to `fmt`)
    pub axis_fmt: Option<&'a dyn Fn(f64) -> String>,
    /// fixed axis maximum (e.g. 1 for fractions); otherwise the largest value plus room for labels
    pub x_max: Option<f64>,
    pub width: u32,
}

impl Bars<'_> {
    pub fn draw(&self) -> ChartResult {
        let n = self.categories.len().max(1);
        let k = if self.single_bar_per_band {
            1
        } else {
            self.series.len().max(1)
        };
        let bar_px = 22u32;
        let band_px = bar_px * k as u32 + 14;
        let height = 70 + 64 + band_px * n as u32;
        let longest = self
            .categories
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(4);
        let label_px = (longest as u32 * 10 + 24).clamp(60, 320);
        let largest = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .fold(0f64, |m, &v| m.max(v));
        let x_max = self
            .x_max
            .unwrap_or(if largest > 0.0 { largest } else { 1.0 });
        // room on the right for the value labels
        let longest_value = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .map(|&v| (self.fmt)(v).chars().count())
            .max()
            .unwrap_or(4) as f64;
        let plot_px = (self.width - label_px - 40) as f64;
        let label_room = (longest_value * 10.0 + 14.0) / plot_px;
        let x_end = x_max / (1.0 - label_room).max(0.3);

        let mut buf = String::new();
        {
            let root = SVGBackend::with_string(&mut buf, (self.width, height)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, (FONT, 25).into_font().color(&INK))
                .margin(12)
                .margin_right(24)
                .x_label_area_size(62)
                .y_label_area_size(label_px)
                .build_cartesian_2d(0f64..x_end, Bands(n))
                .map_err(err)?;
            let cats = &self.categories;
            let name_of = |v: &f64| {
                let i = v.floor() as usize;
                cats.get(n.saturating_sub(1 + i))
                    .cloned()
                    .unwrap_or_default()
            };
            let fmt = self.fmt;
            let tick = self.axis_fmt.unwrap_or(fmt);
            let axis_fmt = |v: &f64| {
                if *v > x_max * 1.0001 {
                    String::new()
                } else {
                    tick(*v)
                }
            };
            chart
                .configure_mesh()
                .disable_y_mesh()
                .x_labels(6)
                .x_label_formatter(&axis_fmt)
                .y_label_formatter(&name_of)
                .x_desc(self.x_desc.as_str())
                .label_style((FONT, 19).into_font().color(&INK))
                .axis_desc_style((FONT, 19).into_font().color(&INK))
                .light_line_style(WHITE.mix(0.0))
                .bold_line_style(BLACK.mix(0.08))
                .draw()
                .map_err(err)?;
            let slot = 0.8 / k as f64;
            let value_style = TextStyle::from((FONT, 18).into_font())
                .color(&INK)
                .pos(Pos::new(HPos::Left, VPos::Center));
            for (si, s) in self.series.iter().enumerate() {
                for (i, v) in s.values.iter().enumerate() {
                    if self.single_bar_per_band && v.is_none() {
                        continue;
                    }
                    let pos = if self.single_bar_per_band { 0 } else { si };
                    let y_top = (n - 1 - i) as f64 + 0.9 - pos as f64 * slot;
                    let (ya, yb) = (y_top - slot + 0.03, y_top - 0.03);
                    let ymid = (ya + yb) / 2.0;
                    let (end, label) = match v {
                        Some(v) => (*v, fmt(*v)),
                        None => (0.0, "none".to_string()),
                    };
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(0.0, ya), (end.max(0.0), yb)],
                            s.color.filled(),
                        )))
                        .map_err(err)?;
                    chart
                        .draw_series(std::iter::once(
                            EmptyElement::at((end.max(0.0), ymid))
                                + Text::new(label, (5, 0), value_style.clone()),
                        ))
                        .map_err(err)?;
                }
            }
            root.present().map_err(err)?;
        }
        Ok(finish(buf, &self.title))
    }
}

/// A line series: a name and its points in x order.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Lines with markers and described axes; the legend is the page's (HTML, colours from
/// [`series_color`]), so it never covers a curve.
pub struct Lines<'a> {
    pub title: String,
    pub lines: Vec<Line>,
    pub x_desc: String,
    pub y_desc: String,
    pub x_fmt: &'a dyn Fn(f64) -> String,
    pub y_fmt: &'a dyn Fn(f64) -> String,
    /// whether the y axis starts at zero
    pub y_from_zero: bool,
    pub width: u32,
    pub height: u32,
}

fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-12 {
            lo.abs() * 0.1
        } else {
            1.0
        };
        return (lo - d, hi + d);
    }
    let d = (hi - lo) * 0.08;
    (lo - d, hi + d)
}

/// A y range that starts at 0 when asked and all values are >= 0.
fn y_range(pts: &[(f64, f64)], from_zero: bool) -> (f64, f64) {
    let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (a, b) = padded(lo, hi);
    if from_zero && lo >= 0.0 {
        (0.0, b)
    } else {
        (a, b)
    }
}

impl Lines<'_> {
    pub fn draw(&self) -> ChartResult {
        let all: Vec<(f64, f64)> = self.lines.iter().flat_map(|l| l.points.clone()).collect();
        let (x0, x1) = {
            let lo = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
            let hi = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
            padded(lo, hi)
        };
        let (y0, y1) = y_range(&all, self.y_from_zero);
        let mut buf = String::new();
        {
            let root =
                SVGBackend::with_string(&mut buf, (self.width, self.height)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, (FONT, 25).into_font().color(&INK))
                .margin(12)
                .margin_right(28)
                .x_label_area_size(66)
                .y_label_area_size(100)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(err)?;
            let (xf, yf) = (self.x_fmt, self.y_fmt);
            chart
                .configure_mesh()
                .x_labels(7)
                .y_labels(7)
                .x_label_formatter(&|v| xf(*v))
                .y_label_formatter(&|v| yf(*v))
                .x_desc(self.x_desc.as_str())
                .y_desc(self.y_desc.as_str())
                .label_style((FONT, 19).into_font().color(&INK))
                .axis_desc_style((FONT, 19).into_font().color(&INK))
                .light_line_style(BLACK.mix(0.04))
                .bold_line_style(BLACK.mix(0.1))
                .draw()
                .map_err(err)?;
            for (i, l) in self.lines.iter().enumerate() {
                let c = series_color(i);
                chart
                    .draw_series(LineSeries::new(l.points.clone(), c.stroke_width(3)))
                    .map_err(err)?;
                chart
                    .draw_series(l.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(err)?;
            }
            root.present().map_err(err)?;
        }
        Ok(finish(buf, &self.title))
    }
}
