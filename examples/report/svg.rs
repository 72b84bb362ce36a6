//! A small hand-written SVG toolkit for the report: a [`Plot`] with linear
//! axes, round-number ticks, polylines, shaded bands, bars, dots and a legend
//! (its tick arithmetic is in `ticks.rs`, where values land on the page and
//! the marks drawn from there in `frame.rs`, and the rectangle grids for
//! kernels and heat maps in `grid.rs`).
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

    pub fn attributes(&self) -> String {
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
pub fn marker(shape: Shape, cx: f64, cy: f64, r: f64, colour: &str, tip: &str) -> String {
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
pub enum Mark {
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
pub enum Key {
    /// A filled swatch (a series' colour).
    Swatch(String),
    /// A short line in the series' stroke, with its marker.
    Line(String, Stroke, Option<Shape>),
    /// An event mark, as [`Plot::vline`] draws it.
    Event,
}

/// Colour of the event ticks ([`Plot::vline`]), and of their lines across
/// the plot, paler so that they stay behind the data.
/// A chart with a title, two labelled linear axes and a legend. The axis
/// ranges follow the data; the x axis can instead hold named
/// categories (for bar charts), category i spanning [i, i+1].
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub width: f64,
    pub height: f64,
    pub x_range: Option<(f64, f64)>,
    pub x_from_zero: bool,
    pub y_range: Option<(f64, f64)>,
    pub y_log: bool,
    pub x_whole: bool,
    pub categories: Vec<String>,
    pub marks: Vec<Mark>,
    pub legend: Vec<(String, Key)>,
}

pub const LEFT: f64 = 62.0;
pub const RIGHT: f64 = 18.0;
pub const BOTTOM: f64 = 42.0;
pub const TITLE_SIZE: f64 = 14.0;
pub const FONT_SIZE: f64 = 11.0;
/// Category labels are turned this many degrees when they would not fit
/// side by side.
pub const LABEL_TURN: f64 = 40.0;

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
}
