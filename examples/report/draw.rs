//! How a [`Plot`] becomes SVG: the data's extent, the frame and its ticks,
//! the marks, the axes and the legend, and [`Plot::finish`], which puts
//! them together (the builder itself is in `svg.rs`).

use std::fmt::Write;

use crate::frame::{Frame, EVENT_COLOUR, EVENT_LINE_COLOUR, EVENT_LINE_GAP};
use crate::svg::{
    escape, marker, text_width, Key, Mark, Plot, BOTTOM, FONT_SIZE, LABEL_TURN, LEFT, RIGHT,
    TITLE_SIZE,
};
use crate::ticks::{log_ticks, nice_range, nice_step, tick_label, ticks};

impl Plot {
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
