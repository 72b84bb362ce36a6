//! Where a plot's values land on the page ([`Frame`]), and the marks drawn
//! straight from it: mask-update events, shaded bands and labelled bars.

use std::fmt::Write;

use crate::svg::{escape, text_width, FONT_SIZE, LEFT};

pub const EVENT_COLOUR: &str = "#555555";
pub const EVENT_LINE_COLOUR: &str = "#d4d4d4";
/// Event lines are drawn across the plot only while they are at least this
/// many pixels apart; closer, they would hatch it, and only the ticks on
/// its top edge are drawn.
pub const EVENT_LINE_GAP: f64 = 12.0;

/// Where a plot's data go in its SVG: the ranges (y on the drawn scale:
/// y, or log10(1 + y)) and the plotting area, `top` down, `pw` by `ph`.
pub struct Frame {
    pub x0: f64,
    pub x1: f64,
    pub y0: f64,
    pub y1: f64,
    pub log: bool,
    pub top: f64,
    pub pw: f64,
    pub ph: f64,
    /// The whole chart's height.
    pub height: f64,
}

impl Frame {
    /// A y value on the drawn scale.
    pub fn fy(&self, y: f64) -> f64 {
        if self.log {
            y.max(0.0).ln_1p() / 10f64.ln()
        } else {
            y
        }
    }

    pub fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * self.pw
    }

    pub fn py(&self, y: f64) -> f64 {
        self.py_scale(self.fy(y))
    }

    /// The page y of a value already on the drawn scale.
    pub fn py_scale(&self, v: f64) -> f64 {
        self.top + (1.0 - (v - self.y0) / (self.y1 - self.y0)) * self.ph
    }

    pub fn axis_y(&self) -> f64 {
        self.top + self.ph
    }

    /// A mask-update mark at x: a tick at the top, and with `line` a faint
    /// line down to the axis; its tooltip `tip`.
    pub fn write_event(&self, s: &mut String, x: f64, tip: &str, line: bool) {
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
    pub fn write_band(&self, s: &mut String, points: &[(f64, f64, f64)], colour: &str) {
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
    pub fn write_bar(
        &self,
        s: &mut String,
        (b0, b1): (f64, f64),
        y: f64,
        colour: &str,
        label: &str,
    ) {
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
