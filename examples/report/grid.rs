//! Rectangle grids: every kernel of a layer as a small grid of its taps
//! (active or not, and their weights), and heat maps of a whole layer.

use std::fmt::Write;

use crate::svg::{escape, text_width, FONT_SIZE, TITLE_SIZE};

/// "#rrggbb" for the colour a fraction `t` of the way from `a` to `b`.
fn mix(a: [u8; 3], b: [u8; 3], t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let c = |i: usize| (a[i] as f64 + (b[i] as f64 - a[i] as f64) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", c(0), c(1), c(2))
}

const WHITE: [u8; 3] = [255, 255, 255];
const RED: [u8; 3] = [178, 24, 43];
const BLUE: [u8; 3] = [33, 102, 172];
const NAVY: [u8; 3] = [8, 48, 107];

/// Output and input channels a kernel grid draws at most: a layer of 64×64
/// kernels would be 4,096 small grids and tens of thousands of SVG
/// elements, which no browser shows well and no reader can take in. A
/// bigger layer's grid shows its first channels, and
/// [`crate::charts::export_section`] adds a map of the whole layer.
pub const GRID_MAX_CHANNELS: usize = 16;

/// The colour of an active tap of weight `v` when the largest |w| of the
/// layer is `largest`: red for positive, blue for negative, darker for
/// larger |w| (never paler than a quarter, so small weights still show
/// against the grey of pruned taps).
fn weight_colour(v: f64, largest: f64) -> String {
    let strength = 0.25 + 0.75 * v.abs() / largest;
    mix(WHITE, if v >= 0.0 { RED } else { BLUE }, strength)
}

/// Grey of a pruned tap.
const PRUNED: &str = "#e8e8e8";

/// A horizontal colour scale at (x, y): `cells` swatches, the colour of
/// each from `colour_at(t)` for t from 0 to 1, labelled `low` and `high` at
/// its ends (and `mid` under its centre, if given). Returns its width.
fn colour_scale(
    s: &mut String,
    (x, y): (f64, f64),
    cells: usize,
    colour_at: &dyn Fn(f64) -> String,
    (low, mid, high): (&str, Option<&str>, &str),
) -> f64 {
    let w = 14.0;
    for i in 0..cells {
        let t = i as f64 / (cells - 1).max(1) as f64;
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{y:.1}" width="{w}" height="10" fill="{}" stroke="#d0d0d0" stroke-width="0.5"/>"##,
            x + i as f64 * w,
            colour_at(t)
        );
    }
    let end = x + cells as f64 * w;
    let _ = write!(
        s,
        r#"<text x="{x:.1}" y="{:.1}" font-size="9">{}</text><text x="{end:.1}" y="{:.1}" font-size="9" text-anchor="end">{}</text>"#,
        y + 21.0,
        escape(low),
        y + 21.0,
        escape(high)
    );
    if let Some(mid) = mid {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
            (x + end) / 2.0,
            y + 21.0,
            escape(mid)
        );
    }
    end - x
}

/// The taps of the (out, in) kernels of a conv weight of shape
/// [O, C, KH, KW], as a matrix of small KH×KW grids: row o, column c, for
/// the first [`GRID_MAX_CHANNELS`] of each. Pruned taps stay grey; active
/// ones are red (positive weight) or blue (negative), darker for larger
/// |w|, or black when no weight is given; a colour scale under the grid
/// says so. Each kernel is a `<g class="kernel">` whose tooltip counts its
/// active taps.
pub fn kernel_grid(title: &str, shape: [usize; 4], mask: &[f32], weight: Option<&[f32]>) -> String {
    let [o_all, c_all, kh, kw] = shape;
    let (o, c) = (o_all.min(GRID_MAX_CHANNELS), c_all.min(GRID_MAX_CHANNELS));
    let taps = kh * kw;
    // Cells shrink for big kernels so a grid stays a sensible size.
    let cell = (36.0 / kh.max(kw) as f64).clamp(2.0, 8.0);
    let gap = 4.0;
    let (kernel_w, kernel_h) = (cell * kw as f64, cell * kh as f64);
    let (left, top) = (46.0, 56.0);
    let grid_h = o as f64 * (kernel_h + gap);
    let width = (left + c as f64 * (kernel_w + gap) + 12.0)
        .max(text_width(title, TITLE_SIZE) + 24.0)
        .max(330.0);
    let height = top + grid_h + 30.0 + 34.0;
    // The largest |w| over the active taps of the whole layer, so a cropped
    // grid keeps the layer's scale.
    let largest = weight
        .map(|w| {
            w.iter()
                .zip(mask)
                .filter(|(_, &m)| m != 0.0)
                .fold(0.0f64, |acc, (&v, _)| acc.max((v as f64).abs()))
        })
        .unwrap_or(0.0);

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="{FONT_SIZE}" role="img"><title>{t}</title><rect width="{width:.0}" height="{height:.0}" fill="#ffffff"/><text x="{:.1}" y="20" font-size="{TITLE_SIZE}" font-weight="bold" text-anchor="middle">{t}</text>"##,
        width / 2.0,
        t = escape(title)
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="38" text-anchor="middle">input channel</text><text transform="translate(12 {:.1}) rotate(-90)" text-anchor="middle">output channel</text>"#,
        left + c as f64 * (kernel_w + gap) / 2.0,
        top + grid_h / 2.0
    );
    // Channel numbers: every one while they fit, else every 4th.
    let every = if kernel_w + gap >= 12.0 { 1 } else { 4 };
    for ci in (0..c).step_by(every) {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{ci}</text>"#,
            left + ci as f64 * (kernel_w + gap) + kernel_w / 2.0,
            top - 5.0
        );
    }
    for oi in 0..o {
        let y = top + oi as f64 * (kernel_h + gap);
        if oi % every == 0 {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="9">{oi}</text>"#,
                left - 4.0,
                y + kernel_h / 2.0 + 3.0
            );
        }
        for ci in 0..c {
            let x = left + ci as f64 * (kernel_w + gap);
            let base = (oi * c_all + ci) * taps;
            let active = mask[base..base + taps]
                .iter()
                .filter(|&&m| m != 0.0)
                .count();
            let _ = write!(
                s,
                r##"<g class="kernel" transform="translate({x:.1} {y:.1})"><title>out {oi}, in {ci}: {active} of {taps} taps active</title><rect width="{kernel_w:.1}" height="{kernel_h:.1}" fill="{PRUNED}"/>"##
            );
            for t in 0..taps {
                if mask[base + t] == 0.0 {
                    continue;
                }
                let fill = match weight {
                    Some(w) if largest > 0.0 => weight_colour(w[base + t] as f64, largest),
                    _ => "#222222".to_string(),
                };
                let _ = write!(
                    s,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/>"#,
                    (t % kw) as f64 * cell,
                    (t / kw) as f64 * cell,
                    cell - 0.6,
                    cell - 0.6
                );
            }
            s.push_str("</g>");
        }
    }

    // The key: what each colour means.
    let key_y = top + grid_h + 14.0;
    let mut x = left;
    if largest > 0.0 {
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{:.1}">weight</text>"#,
            key_y + 9.0
        );
        x += 46.0;
        let (lo, hi) = (format!("−{largest:.2}"), format!("+{largest:.2}"));
        x += colour_scale(
            &mut s,
            (x, key_y),
            11,
            &|t| weight_colour((2.0 * t - 1.0) * largest, largest),
            (&lo, Some("0"), &hi),
        );
        x += 16.0;
    } else {
        let _ = write!(
            s,
            r##"<rect x="{x:.1}" y="{key_y:.1}" width="14" height="10" fill="#222222"/><text x="{:.1}" y="{:.1}">active</text>"##,
            x + 18.0,
            key_y + 9.0
        );
        x += 64.0;
    }
    let _ = write!(
        s,
        r##"<rect x="{x:.1}" y="{key_y:.1}" width="14" height="10" fill="{PRUNED}" stroke="#d0d0d0" stroke-width="0.5"/><text x="{:.1}" y="{:.1}">pruned</text>"##,
        x + 18.0,
        key_y + 9.0
    );
    s.push_str("</svg>");
    s
}

/// A rows×cols map of `values` in [0, 1] (row-major; NaN for no value, an
/// empty grey cell), white at 0 and dark
/// blue at the largest value (sparse layers keep ~10% of taps, so a fixed
/// 0–1 scale would be all pale), with a colour scale under it. Cells big
/// enough to hold it are labelled with their value as a percentage; each
/// cell is a `<rect class="tap">` whose tooltip gives its value and, from
/// `name_of(row, col)`, what it is. `row_names`, if not empty, label the
/// rows on the left.
pub fn heat_map(
    title: &str,
    (rows, cols): (usize, usize),
    (row_label, col_label): (&str, &str),
    values: &[f64],
    name_of: &dyn Fn(usize, usize) -> String,
    what: &str,
    row_names: &[String],
) -> String {
    const NAME_SIZE: f64 = 9.0;
    let cell = (200.0 / rows.max(cols) as f64).clamp(9.0, 44.0);
    let names = row_names
        .iter()
        .map(|n| text_width(n, NAME_SIZE))
        .fold(0.0f64, f64::max);
    let (left, top) = (40.0 + names, 50.0);
    let width = (left + cell * cols as f64 + 20.0)
        .max(text_width(title, TITLE_SIZE) + 24.0)
        .max(text_width(what, FONT_SIZE) + left + 20.0)
        .max(240.0);
    let height = top + cell * rows as f64 + 64.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="{FONT_SIZE}" role="img"><title>{t}</title><rect width="{width:.0}" height="{height:.0}" fill="#ffffff"/><text x="{:.1}" y="20" font-size="{TITLE_SIZE}" font-weight="bold" text-anchor="middle">{t}</text>"##,
        width / 2.0,
        t = escape(title)
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="38" text-anchor="middle">{}</text><text transform="translate(12 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        left + cell * cols as f64 / 2.0,
        escape(col_label),
        top + cell * rows as f64 / 2.0,
        escape(row_label)
    );
    for (r, name) in row_names.iter().enumerate().take(rows) {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="{NAME_SIZE}">{}</text>"#,
            left - 4.0,
            top + (r as f64 + 0.5) * cell + NAME_SIZE / 3.0,
            escape(name)
        );
    }
    let largest = values.iter().copied().fold(0.0f64, f64::max);
    // The cells' common stroke once, on a group (maps of hundreds of cells).
    s.push_str(r##"<g stroke="#d0d0d0" stroke-width="0.5">"##);
    for r in 0..rows {
        for c in 0..cols {
            let v = values[r * cols + c];
            let (x, y) = (left + c as f64 * cell, top + r as f64 * cell);
            if v.is_nan() {
                // No value here: an empty cell.
                let _ = write!(
                    s,
                    r##"<rect class="tap" x="{x:.1}" y="{y:.1}" width="{cell:.1}" height="{cell:.1}" fill="#f2f2f2"><title>{}: no data</title></rect>"##,
                    escape(&name_of(r, c))
                );
                continue;
            }
            let shade = if largest > 0.0 { v / largest } else { 0.0 };
            let ink = if shade > 0.55 { "#ffffff" } else { "#222222" };
            let _ = write!(
                s,
                r##"<rect class="tap" x="{x:.1}" y="{y:.1}" width="{cell:.1}" height="{cell:.1}" fill="{}"><title>{}: {:.1}%</title></rect>"##,
                mix(WHITE, NAVY, shade),
                escape(&name_of(r, c)),
                100.0 * v
            );
            if cell >= 24.0 {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="{ink}" stroke="none">{:.0}</text>"#,
                    x + cell / 2.0,
                    y + cell / 2.0 + 3.5,
                    100.0 * v
                );
            }
        }
    }
    s.push_str("</g>");
    let key_y = top + cell * rows as f64 + 12.0;
    colour_scale(
        &mut s,
        (left, key_y),
        9,
        &|t| mix(WHITE, NAVY, t),
        ("0%", None, &format!("{:.0}%", 100.0 * largest)),
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="{:.1}">{}</text>"#,
        height - 10.0,
        escape(what)
    );
    s.push_str("</svg>");
    s
}
