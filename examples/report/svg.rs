//! A small hand-written SVG toolkit for the report: a [`Plot`] with linear
//! axes, round-number ticks, polylines, shaded bands, bars, dots and a legend
//! (the rectangle grids for kernels and heat maps are in `grid.rs`).
//!
//! Every string that reaches the SVG goes through [`escape`], so each chart is
//! well-formed XML and can be pasted into any page or opened on its own.

use std::fmt::Write;

/// Series colours: the "Tableau 10" order, then two darker ones, so that
/// the study's ten modes each get their own.
pub const PALETTE: [&str; 12] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a",
];

/// The i-th series colour, cycling.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Escapes text for XML content and attribute values. Control characters are
/// not allowed in XML 1.0 at all, so they become spaces.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A tick spacing of 1, 2 or 5 × 10^k giving about `target` ticks over [lo, hi].
pub fn nice_step(lo: f64, hi: f64, target: usize) -> f64 {
    let raw = ((hi - lo).abs() / target.max(1) as f64).max(1e-12);
    let magnitude = 10f64.powf(raw.log10().floor());
    let nice = match raw / magnitude {
        r if r < 1.5 => 1.0,
        r if r < 3.0 => 2.0,
        r if r < 7.0 => 5.0,
        _ => 10.0,
    };
    nice * magnitude
}

/// Widens [lo, hi] to whole tick steps, so an axis starts and ends on a tick.
/// An empty or single-value range is opened up around its value.
pub fn nice_range(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = match (lo.is_finite() && hi.is_finite(), hi > lo) {
        (false, _) => (0.0, 1.0),
        (true, true) => (lo, hi),
        (true, false) if lo == 0.0 => (0.0, 1.0),
        (true, false) => (lo - 0.1 * lo.abs(), hi + 0.1 * hi.abs()),
    };
    let step = nice_step(lo, hi, 5);
    ((lo / step).floor() * step, (hi / step).ceil() * step)
}

/// The tick values inside [lo, hi], `step` apart, computed from whole
/// multiples so they do not drift.
fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step + 0.0).collect()
}

/// A tick label with just enough decimals for the step.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{:.*}", decimals, v + 0.0)
}

/// Ticks for a log(1 + y) axis reaching at least `max`: 0, then 1, 2, 5,
/// 10, … up to the first ≥ `max`; thinned to 0 and powers of ten when that
/// would crowd the axis.
fn log_ticks(max: f64) -> Vec<f64> {
    let mut all = vec![0.0];
    let mut decade = 1.0;
    'outer: loop {
        for m in [1.0, 2.0, 5.0] {
            all.push(m * decade);
            if m * decade >= max {
                break 'outer;
            }
        }
        decade *= 10.0;
    }
    if all.len() > 7 {
        let last = *all.last().unwrap();
        all.retain(|&v| v == 0.0 || v == last || v.log10().fract() == 0.0);
    }
    all
}

/// Width of `text` in pixels at `size`, roughly (sans-serif averages ~0.6 em).
pub fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
}

/// How a line is drawn: its width, an SVG dash pattern (`None`: solid) and
/// its opacity. Series that can coincide (the connections regrown and
/// dropped at a mask update are often equal) get different strokes, so the
/// one on top does not hide the other.
#[derive(Clone, Copy, Debug)]
pub struct Stroke {
    pub width: f64,
    pub dash: Option<&'static str>,
    pub opacity: f64,
}

impl Stroke {
    pub const SOLID: Stroke = Stroke {
        width: 2.0,
        dash: None,
        opacity: 1.0,
    };
    pub const DASHED: Stroke = Stroke {
        width: 2.0,
        dash: Some("5 3"),
        opacity: 1.0,
    };

    fn attributes(&self) -> String {
        let mut a = format!(r#" stroke-width="{}""#, self.width);
        if let Some(d) = self.dash {
            let _ = write!(a, r#" stroke-dasharray="{d}""#);
        }
        if self.opacity < 1.0 {
            let _ = write!(a, r#" stroke-opacity="{}""#, self.opacity);
        }
        a
    }
}

/// The shape of a point marker: series that share points stay apart by
/// shape as well as by colour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    Circle,
    Square,
    Diamond,
}

/// `shape` centred on (cx, cy), `r` its half-size, with an optional tooltip.
fn marker(shape: Shape, cx: f64, cy: f64, r: f64, colour: &str, tip: &str) -> String {
    let body = match shape {
        Shape::Circle => format!(r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r:.1}""#),
        Shape::Square => format!(
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}""#,
            cx - r,
            cy - r,
            2.0 * r,
            2.0 * r
        ),
        Shape::Diamond => format!(
            r#"<polygon points="{:.1},{cy:.1} {cx:.1},{:.1} {:.1},{cy:.1} {cx:.1},{:.1}""#,
            cx - 1.3 * r,
            cy - 1.3 * r,
            cx + 1.3 * r,
            cy + 1.3 * r
        ),
    };
    let close = match shape {
        Shape::Circle => "circle",
        Shape::Square => "rect",
        Shape::Diamond => "polygon",
    };
    if tip.is_empty() {
        format!(r##"{body} fill="{colour}" stroke="#ffffff" stroke-width="1"/>"##)
    } else {
        format!(
            r##"{body} fill="{colour}" stroke="#ffffff" stroke-width="1"><title>{}</title></{close}>"##,
            escape(tip)
        )
    }
}

/// Something drawn inside a plot, in data coordinates; laid out in
/// [`Plot::finish`] once the axes are known.
enum Mark {
    Line {
        points: Vec<(f64, f64)>,
        colour: String,
        stroke: Stroke,
    },
    /// (x, low, high) triples: the area between two curves.
    Band {
        points: Vec<(f64, f64, f64)>,
        colour: String,
    },
    Dot {
        x: f64,
        y: f64,
        colour: String,
        shape: Shape,
        /// Half-size in pixels.
        r: f64,
        tip: String,
    },
    Bar {
        x0: f64,
        x1: f64,
        y: f64,
        colour: String,
        label: String,
    },
    /// A thin vertical line across the plot at `x` (an event in time).
    VLine { x: f64, tip: String },
    /// A labelled horizontal reference line at `y` (a chance level).
    HLine {
        y: f64,
        colour: String,
        label: String,
    },
}

/// What a legend entry shows beside its name.
enum Key {
    /// A filled swatch (a series' colour).
    Swatch(String),
    /// A short line in the series' stroke, with its marker.
    Line(String, Stroke, Option<Shape>),
    /// An event mark, as [`Plot::vline`] draws it.
    Event,
}

/// Colour of the event ticks ([`Plot::vline`]), and of their lines across
/// the plot, paler so that they stay behind the data.
const EVENT_COLOUR: &str = "#555555";
const EVENT_LINE_COLOUR: &str = "#d4d4d4";
/// Event lines are drawn across the plot only while they are at least this
/// many pixels apart; closer, they would hatch it, and only the ticks on
/// its top edge are drawn.
const EVENT_LINE_GAP: f64 = 12.0;

/// A chart with a title, two labelled linear axes and a legend. The axis
/// ranges follow the data; the x axis can instead hold named
/// categories (for bar charts), category i spanning [i, i+1].
pub struct Plot {
    title: String,
    x_label: String,
    y_label: String,
    width: f64,
    height: f64,
    x_range: Option<(f64, f64)>,
    x_from_zero: bool,
    y_range: Option<(f64, f64)>,
    y_log: bool,
    x_whole: bool,
    categories: Vec<String>,
    marks: Vec<Mark>,
    legend: Vec<(String, Key)>,
}

const LEFT: f64 = 62.0;
const RIGHT: f64 = 18.0;
const BOTTOM: f64 = 42.0;
pub const TITLE_SIZE: f64 = 14.0;
pub const FONT_SIZE: f64 = 11.0;
/// Category labels are turned this many degrees when they would not fit
/// side by side.
const LABEL_TURN: f64 = 40.0;

impl Plot {
    pub fn new(title: &str, x_label: &str, y_label: &str, width: f64, height: f64) -> Plot {
        Plot {
            title: title.to_string(),
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            width,
            height,
            x_range: None,
            x_from_zero: false,
            y_range: None,
            y_log: false,
            x_whole: false,
            categories: Vec::new(),
            marks: Vec::new(),
            legend: Vec::new(),
        }
    }

    /// Fixes the y axis to [lo, hi] whatever the data, so that charts of
    /// the same quantity can share a scale.
    pub fn y_range(mut self, lo: f64, hi: f64) -> Plot {
        self.y_range = Some((lo, hi));
        self
    }

    /// Makes the x axis start at 0 (steps and epochs: training starts there).
    pub fn x_from_zero(mut self) -> Plot {
        self.x_from_zero = true;
        self
    }

    /// Draws y on a log(1 + y) scale from 0, for counts spanning decades
    /// (the first mask update drops hundreds of connections, later ones a
    /// handful).
    pub fn y_log(mut self) -> Plot {
        self.y_log = true;
        self
    }

    /// Keeps x ticks on whole numbers (epochs).
    pub fn x_whole(mut self) -> Plot {
        self.x_whole = true;
        self
    }

    /// Turns the x axis into named categories; category i spans [i, i+1].
    pub fn categories(mut self, names: Vec<String>) -> Plot {
        self.x_range = Some((0.0, names.len().max(1) as f64));
        self.categories = names;
        self
    }

    pub fn line(&mut self, points: Vec<(f64, f64)>, colour: &str, stroke: Stroke) {
        self.marks.push(Mark::Line {
            points,
            colour: colour.to_string(),
            stroke,
        });
    }

    pub fn band(&mut self, points: Vec<(f64, f64, f64)>, colour: &str) {
        self.marks.push(Mark::Band {
            points,
            colour: colour.to_string(),
        });
    }

    /// A round dot; `tip` shows when the mouse rests on it.
    pub fn dot(&mut self, x: f64, y: f64, colour: &str, tip: &str) {
        self.marker(x, y, colour, (Shape::Circle, 3.5), tip);
    }

    /// A point marker of the given shape and half-size in pixels; `tip` as
    /// for [`Plot::dot`]. Markers are drawn in the order given, so a larger
    /// one given first shows around a smaller one at the same point.
    pub fn marker(&mut self, x: f64, y: f64, colour: &str, (shape, r): (Shape, f64), tip: &str) {
        self.marks.push(Mark::Dot {
            x,
            y,
            colour: colour.to_string(),
            shape,
            r,
            tip: tip.to_string(),
        });
    }

    /// A bar from 0 to `y` over [x0, x1], with `label` written above it.
    pub fn bar(&mut self, x0: f64, x1: f64, y: f64, colour: &str, label: &str) {
        self.marks.push(Mark::Bar {
            x0,
            x1,
            y,
            colour: colour.to_string(),
            label: label.to_string(),
        });
    }

    /// An event such as a mask update at `x`: a tick on the top edge of
    /// the plot and, unless events crowd, a thin pale line across it behind
    /// the data; `tip` names it. Does not widen the x axis.
    pub fn vline(&mut self, x: f64, tip: &str) {
        self.marks.push(Mark::VLine {
            x,
            tip: tip.to_string(),
        });
    }

    /// A dashed horizontal reference line at `y`, `label` written above its
    /// left end (where curves over epochs or steps have not started yet);
    /// it widens the y axis to include `y`.
    pub fn hline(&mut self, y: f64, colour: &str, label: &str) {
        self.marks.push(Mark::HLine {
            y,
            colour: colour.to_string(),
            label: label.to_string(),
        });
    }

    /// A legend entry with a filled swatch.
    pub fn legend(&mut self, name: &str, colour: &str) {
        self.legend
            .push((name.to_string(), Key::Swatch(colour.to_string())));
    }

    /// A legend entry showing a line's stroke (and marker), for series told
    /// apart by how they are drawn.
    pub fn legend_line(&mut self, name: &str, colour: &str, stroke: Stroke, shape: Option<Shape>) {
        self.legend.push((
            name.to_string(),
            Key::Line(colour.to_string(), stroke, shape),
        ));
    }

    /// A legend entry for [`Plot::vline`]'s events.
    pub fn legend_events(&mut self, name: &str) {
        self.legend.push((name.to_string(), Key::Event));
    }

    /// The data's extent along x (`along_x`) or y, over every mark.
    fn extent(&self, along_x: bool) -> (f64, f64) {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        let mut see = |v: f64| {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        };
        for mark in &self.marks {
            match mark {
                Mark::Line { points, .. } => {
                    for &(x, y) in points {
                        see(if along_x { x } else { y });
                    }
                }
                Mark::Band { points, .. } => {
                    for &(x, a, b) in points {
                        if along_x {
                            see(x);
                        } else {
                            see(a);
                            see(b);
                        }
                    }
                }
                Mark::Dot { x, y, .. } => see(if along_x { *x } else { *y }),
                Mark::Bar { x0, x1, y, .. } => {
                    if along_x {
                        see(*x0);
                        see(*x1);
                    } else {
                        see(0.0);
                        see(*y);
                    }
                }
                Mark::VLine { .. } => {}
                Mark::HLine { y, .. } => {
                    if !along_x {
                        see(*y);
                    }
                }
            }
        }
        (lo, hi)
    }

    /// Lays out the legend in rows under the title; returns the rows'
    /// (x, row) positions and the number of rows.
    fn legend_layout(&self) -> (Vec<(f64, usize)>, usize) {
        let mut places = Vec::new();
        let (mut x, mut row) = (LEFT, 0);
        for (name, key) in &self.legend {
            let key_w = match key {
                Key::Swatch(_) | Key::Event => 18.0,
                Key::Line(..) => 30.0,
            };
            let w = key_w + text_width(name, FONT_SIZE) + 14.0;
            if x + w > self.width - RIGHT && x > LEFT {
                x = LEFT;
                row += 1;
            }
            places.push((x, row));
            x += w;
        }
        let rows = if self.legend.is_empty() { 0 } else { row + 1 };
        (places, rows)
    }

    /// Whether the category labels must be turned to fit, and the extra
    /// height they then need below the axis.
    fn category_labels(&self) -> (bool, f64) {
        if self.categories.is_empty() {
            return (false, 0.0);
        }
        let slot = (self.width - LEFT - RIGHT) / self.categories.len() as f64;
        let widest = self
            .categories
            .iter()
            .map(|c| text_width(c, FONT_SIZE))
            .fold(0.0, f64::max);
        if widest + 4.0 <= slot {
            (false, 0.0)
        } else {
            (true, widest * LABEL_TURN.to_radians().sin())
        }
    }

    /// Renders the plot as one `<svg>` element.
    pub fn finish(self) -> String {
        let (legend_places, legend_rows) = self.legend_layout();
        let top = 30.0 + 16.0 * legend_rows as f64 + 8.0;
        // Turned category labels make the chart taller, not the plot smaller.
        let (turned, label_room) = self.category_labels();
        let height = self.height + label_room;
        let (f, y_ticks) = self.frame(top, height);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="{FONT_SIZE}" role="img"><title>{t}</title>"#,
            w = self.width,
            h = f.height,
            t = escape(&self.title)
        );
        let _ = write!(
            s,
            r##"<rect width="{}" height="{}" fill="#ffffff"/><text x="{}" y="20" font-size="{TITLE_SIZE}" font-weight="bold" text-anchor="middle">{}</text>"##,
            self.width,
            f.height,
            self.width / 2.0,
            escape(&self.title)
        );

        self.write_ticks(&mut s, &f, y_ticks, turned);
        self.write_marks(&mut s, &f);
        self.write_axes_and_legend(&mut s, &f, legend_places);
        s.push_str("</svg>");
        s
    }

    /// The plot's ranges and plotting area below `top`, and the y ticks
    /// (on the drawn scale) with their labels.
    fn frame(&self, top: f64, height: f64) -> (Frame, Vec<(f64, String)>) {
        let (x0, x1) = self.x_range.unwrap_or_else(|| {
            let (lo, hi) = self.extent(true);
            let lo = if self.x_from_zero { lo.min(0.0) } else { lo };
            if lo.is_finite() && hi > lo {
                (lo, hi)
            } else {
                nice_range(lo, hi)
            }
        });
        // y0, y1 and the y ticks live on the drawn scale: y, or log10(1 + y).
        let log = self.y_log;
        let fy = move |y: f64| {
            if log {
                y.max(0.0).ln_1p() / 10f64.ln()
            } else {
                y
            }
        };
        let (lo, hi) = self.extent(false);
        let (y0, y1, y_ticks) = if log {
            // Headroom, so the largest count does not run along the frame.
            let top_value = log_ticks((1.5 * hi).max(1.0))
                .last()
                .copied()
                .unwrap_or(1.0);
            let labels = log_ticks(top_value);
            let ticks: Vec<(f64, String)> =
                labels.iter().map(|&v| (fy(v), v.to_string())).collect();
            (0.0, fy(top_value), ticks)
        } else {
            let (y0, y1) = match self.y_range {
                Some(range) => range,
                None => {
                    // A little headroom so a flat line does not sit on the frame.
                    let pad = 0.03 * (hi - lo);
                    nice_range(lo - pad, hi + pad)
                }
            };
            let step = nice_step(y0, y1, 5);
            let ticks = ticks(y0, y1, step)
                .into_iter()
                .map(|v| (v, tick_label(v, step)))
                .collect();
            (y0, y1, ticks)
        };
        let (pw, ph) = (self.width - LEFT - RIGHT, self.height - top - BOTTOM);
        let frame = Frame {
            x0,
            x1,
            y0,
            y1,
            log,
            top,
            pw,
            ph,
            height,
        };
        (frame, y_ticks)
    }

    /// Grid lines and ticks: the y ticks given, the x ticks or category
    /// names (`turned` or level).
    fn write_ticks(&self, s: &mut String, f: &Frame, y_ticks: Vec<(f64, String)>, turned: bool) {
        for (v, label) in y_ticks {
            let y = f.py_scale(v);
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + f.pw,
                LEFT - 5.0,
                y + 4.0,
                label
            );
        }
        let axis_y = f.axis_y();
        if self.categories.is_empty() {
            let mut x_step = nice_step(f.x0, f.x1, ((f.pw / 70.0) as usize).clamp(2, 8));
            if self.x_whole {
                x_step = x_step.max(1.0).round();
            }
            for v in ticks(f.x0, f.x1, x_step) {
                let x = f.px(v);
                let _ = write!(
                    s,
                    r##"<line x1="{x:.1}" y1="{axis_y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                    axis_y + 4.0,
                    axis_y + 16.0,
                    tick_label(v, x_step)
                );
            }
        } else {
            for (i, name) in self.categories.iter().enumerate() {
                let x = f.px(i as f64 + 0.5);
                if turned {
                    // Turned about its end, which sits under the category.
                    let _ = write!(
                        s,
                        r#"<text transform="translate({:.1} {:.1}) rotate(-{LABEL_TURN})" text-anchor="end">{}</text>"#,
                        x + 4.0,
                        axis_y + 12.0,
                        escape(name)
                    );
                } else {
                    let _ = write!(
                        s,
                        r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                        axis_y + 16.0,
                        escape(name)
                    );
                }
            }
        }
    }

    /// The data: events and bands first so lines and dots sit on top of
    /// them.
    fn write_marks(&self, s: &mut String, f: &Frame) {
        let events_in_view = self
            .marks
            .iter()
            .filter(|m| matches!(m, Mark::VLine { x, .. } if (f.x0..=f.x1).contains(x)))
            .count();
        let event_lines = events_in_view > 0 && f.pw / events_in_view as f64 >= EVENT_LINE_GAP;
        let mut ordered: Vec<&Mark> = self.marks.iter().collect();
        ordered.sort_by_key(|m| match m {
            Mark::VLine { .. } => 0,
            Mark::Band { .. } => 1,
            Mark::Bar { .. } => 2,
            Mark::HLine { .. } => 3,
            Mark::Line { .. } => 4,
            Mark::Dot { .. } => 5,
        });
        for mark in ordered {
            match mark {
                Mark::VLine { x, tip } => f.write_event(s, *x, tip, event_lines),
                Mark::HLine { y, colour, label } => {
                    if !y.is_finite() {
                        continue;
                    }
                    let yy = f.py(*y);
                    let _ = write!(
                        s,
                        r#"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
                        LEFT + f.pw,
                        LEFT + 4.0,
                        yy - 4.0,
                        escape(label)
                    );
                }
                Mark::Band { points, colour } => f.write_band(s, points, colour),
                Mark::Line {
                    points,
                    colour,
                    stroke,
                } => {
                    // A non-finite value breaks the line rather than the chart.
                    for piece in points.split(|p| !(p.0.is_finite() && p.1.is_finite())) {
                        let mut path = String::new();
                        for &(x, y) in piece {
                            let _ = write!(path, "{:.1},{:.1} ", f.px(x), f.py(y));
                        }
                        if piece.len() >= 2 {
                            let _ = write!(
                                s,
                                r#"<polyline points="{}" fill="none" stroke="{colour}"{}/>"#,
                                path.trim_end(),
                                stroke.attributes()
                            );
                        }
                    }
                }
                Mark::Dot {
                    x,
                    y,
                    colour,
                    shape,
                    r,
                    tip,
                } => {
                    if x.is_finite() && y.is_finite() {
                        s.push_str(&marker(*shape, f.px(*x), f.py(*y), *r, colour, tip));
                    }
                }
                Mark::Bar {
                    x0,
                    x1,
                    y,
                    colour,
                    label,
                } => f.write_bar(s, (*x0, *x1), *y, colour, label),
            }
        }
    }

    /// Axes, axis labels and the legend (at `places`).
    fn write_axes_and_legend(&self, s: &mut String, f: &Frame, places: Vec<(f64, usize)>) {
        let (top, axis_y) = (f.top, f.axis_y());
        let _ = write!(
            s,
            r##"<polyline points="{LEFT},{top:.1} {LEFT},{axis_y:.1} {:.1},{axis_y:.1}" fill="none" stroke="#333333"/>"##,
            LEFT + f.pw
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + f.pw / 2.0,
            f.height - 8.0,
            escape(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            f.top + f.ph / 2.0,
            escape(&self.y_label)
        );
        for ((name, key), (x, row)) in self.legend.iter().zip(places) {
            let y = 34.0 + 16.0 * row as f64;
            let text_x = match key {
                Key::Swatch(colour) => {
                    let _ = write!(
                        s,
                        r#"<rect x="{x:.1}" y="{:.1}" width="14" height="8" fill="{colour}"/>"#,
                        y - 7.0
                    );
                    x + 18.0
                }
                Key::Event => {
                    let _ = write!(
                        s,
                        r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{EVENT_LINE_COLOUR}" stroke-width="1"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{EVENT_COLOUR}" stroke-width="1.5"/>"#,
                        x + 7.0,
                        y - 9.0,
                        x + 7.0,
                        y + 2.0,
                        x + 7.0,
                        y - 9.0,
                        x + 7.0,
                        y - 4.0
                    );
                    x + 18.0
                }
                Key::Line(colour, stroke, shape) => {
                    let _ = write!(
                        s,
                        r#"<line x1="{x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}"{}/>"#,
                        y - 3.5,
                        x + 26.0,
                        y - 3.5,
                        stroke.attributes()
                    );
                    if let Some(shape) = shape {
                        s.push_str(&marker(*shape, x + 13.0, y - 3.5, 3.5, colour, ""));
                    }
                    x + 30.0
                }
            };
            let _ = write!(
                s,
                r#"<text x="{text_x:.1}" y="{y:.1}">{}</text>"#,
                escape(name)
            );
        }
    }
}

/// Where a plot's data go in its SVG: the ranges (y on the drawn scale:
/// y, or log10(1 + y)) and the plotting area, `top` down, `pw` by `ph`.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    log: bool,
    top: f64,
    pw: f64,
    ph: f64,
    /// The whole chart's height.
    height: f64,
}

impl Frame {
    /// A y value on the drawn scale.
    fn fy(&self, y: f64) -> f64 {
        if self.log {
            y.max(0.0).ln_1p() / 10f64.ln()
        } else {
            y
        }
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * self.pw
    }

    fn py(&self, y: f64) -> f64 {
        self.py_scale(self.fy(y))
    }

    /// The page y of a value already on the drawn scale.
    fn py_scale(&self, v: f64) -> f64 {
        self.top + (1.0 - (v - self.y0) / (self.y1 - self.y0)) * self.ph
    }

    fn axis_y(&self) -> f64 {
        self.top + self.ph
    }

    /// A mask-update mark at x: a tick at the top, and with `line` a faint
    /// line down to the axis; its tooltip `tip`.
    fn write_event(&self, s: &mut String, x: f64, tip: &str, line: bool) {
        let (top, axis_y) = (self.top, self.axis_y());
        if !(x.is_finite() && (self.x0..=self.x1).contains(&x)) {
            return;
        }
        let x = self.px(x);
        s.push_str("<g class=\"event\">");
        if line {
            let _ = write!(
                s,
                r#"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{axis_y:.1}" stroke="{EVENT_LINE_COLOUR}" stroke-width="1"/>"#
            );
        }
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{:.1}" stroke="{EVENT_COLOUR}" stroke-width="1.5"/><title>{}</title></g>"#,
            top + 7.0,
            escape(tip)
        );
    }

    /// A shaded band between the lows and highs of `points` (x, lo, hi).
    fn write_band(&self, s: &mut String, points: &[(f64, f64, f64)], colour: &str) {
        let pts: Vec<_> = points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite() && p.2.is_finite())
            .collect();
        if pts.len() < 2 {
            return;
        }
        let mut path = String::new();
        for &&(x, _, hi) in &pts {
            let _ = write!(path, "{:.1},{:.1} ", self.px(x), self.py(hi));
        }
        for &&(x, lo, _) in pts.iter().rev() {
            let _ = write!(path, "{:.1},{:.1} ", self.px(x), self.py(lo));
        }
        let _ = write!(
            s,
            r#"<polygon points="{}" fill="{colour}" fill-opacity="0.18" stroke="none"/>"#,
            path.trim_end()
        );
    }

    /// A bar over [b0, b1] from 0 to y, labelled.
    fn write_bar(&self, s: &mut String, (b0, b1): (f64, f64), y: f64, colour: &str, label: &str) {
        if !y.is_finite() {
            return;
        }
        let (top_y, base) = (self.py(y.max(0.0)), self.py(y.min(0.0)));
        // Smaller type when the label is wider than its slot
        // (many bars), so neighbours' labels do not touch.
        let slot = self.px(b1) - self.px(b0) + 6.0;
        let size = if text_width(label, FONT_SIZE) > slot {
            9
        } else {
            11
        };
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{top_y:.1}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="0.55"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="{size}">{}</text>"#,
            self.px(b0),
            self.px(b1) - self.px(b0),
            base - top_y,
            (self.px(b0) + self.px(b1)) / 2.0,
            base - 8.0,
            escape(label)
        );
    }
}
