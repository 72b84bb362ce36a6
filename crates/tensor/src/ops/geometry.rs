//! The geometry of a convolution and of a max-pool window: the options
//! (stride, padding, dilation, groups), the shapes of the operands, and the
//! output sizes they give. Every convolution kernel, dense or sparse, and
//! the fused conv blocks take their shapes from here.

/// Per-axis options of a convolution; each pair is (y, x), i.e. (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

/// Everything a conv2d kernel needs to know about its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub opts: Conv2dOptions,
}

impl Conv2dShape {
    /// Checks that an input of shape `input` (B, C, H, W) and a weight of shape
    /// `weight` (O, C/groups, KH, KW) fit together under `opts`.
    pub fn new(input: &[usize], weight: &[usize], opts: Conv2dOptions) -> Result<Self, String> {
        if input.len() != 4 || weight.len() != 4 {
            return Err(format!(
                "conv2d: input must be (B, C, H, W) and weight (O, C/groups, KH, KW); got input {input:?}, weight {weight:?}"
            ));
        }
        let g = opts.groups;
        if g == 0
            || opts.stride.0 == 0
            || opts.stride.1 == 0
            || opts.dilation.0 == 0
            || opts.dilation.1 == 0
        {
            return Err(format!(
                "conv2d: groups, stride and dilation must be positive; got {opts:?}"
            ));
        }
        let s = Conv2dShape {
            batch: input[0],
            in_channels: input[1],
            in_h: input[2],
            in_w: input[3],
            out_channels: weight[0],
            kernel_h: weight[2],
            kernel_w: weight[3],
            opts,
        };
        if !s.in_channels.is_multiple_of(g)
            || !s.out_channels.is_multiple_of(g)
            || weight[1] * g != s.in_channels
        {
            return Err(format!(
                "conv2d: with groups={g}, input channels ({}) and output channels ({}) must divide by groups and weight dim 1 must be C/groups; got input {input:?}, weight {weight:?}",
                s.in_channels, s.out_channels
            ));
        }
        let eff_h = opts.dilation.0 * (s.kernel_h.max(1) - 1) + 1;
        let eff_w = opts.dilation.1 * (s.kernel_w.max(1) - 1) + 1;
        if s.kernel_h == 0
            || s.kernel_w == 0
            || s.in_h + 2 * opts.padding.0 < eff_h
            || s.in_w + 2 * opts.padding.1 < eff_w
        {
            return Err(format!(
                "conv2d: kernel {}x{} (dilated {eff_h}x{eff_w}) does not fit the padded input {}x{}; input {input:?}, weight {weight:?}, {opts:?}",
                s.kernel_h, s.kernel_w, s.in_h + 2 * opts.padding.0, s.in_w + 2 * opts.padding.1
            ));
        }
        Ok(s)
    }

    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.opts.padding.0 - self.opts.dilation.0 * (self.kernel_h - 1) - 1)
            / self.opts.stride.0
            + 1
    }
    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.opts.padding.1 - self.opts.dilation.1 * (self.kernel_w - 1) - 1)
            / self.opts.stride.1
            + 1
    }
    /// Input channels seen by one output channel (C / groups).
    pub fn group_in(&self) -> usize {
        self.in_channels / self.opts.groups
    }
    /// Output channels per group (O / groups).
    pub fn group_out(&self) -> usize {
        self.out_channels / self.opts.groups
    }
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.in_channels, self.in_h, self.in_w]
    }
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.group_in(),
            self.kernel_h,
            self.kernel_w,
        ]
    }
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_channels, self.out_h(), self.out_w()]
    }
    /// Output pixels per channel of one image (OH·OW): the columns of one
    /// image's im2col matrix.
    pub fn out_pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }
    /// Rows of one group's im2col matrix (C/groups · KH · KW): the length of
    /// one output channel's dot product.
    pub fn col_rows(&self) -> usize {
        self.group_in() * self.kernel_h * self.kernel_w
    }
    /// Floating-point operations of the forward pass (2 per multiply-add,
    /// bias not counted). Each of the two backward GEMMs costs the same.
    pub fn flops(&self) -> usize {
        2 * self.batch * self.out_channels * self.col_rows() * self.out_pixels()
    }
}

/// A max-pool window and its stride, each (y, x); no padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
}

impl PoolOptions {
    /// The pooled plane (PH, PW) of the conv output plane (OH, OW); panics
    /// naming the shapes if the window does not fit.
    pub fn pooled_size(&self, s: &Conv2dShape) -> (usize, usize) {
        let (oh, ow) = (s.out_h(), s.out_w());
        let (k, st) = (self.kernel, self.stride);
        assert!(
            k.0 >= 1 && k.1 >= 1 && st.0 >= 1 && st.1 >= 1 && oh >= k.0 && ow >= k.1,
            "conv2d_relu_max_pool2d: pool {self:?} does not fit the {oh}x{ow} conv output"
        );
        crate::ops::pool::pooled_size((oh, ow), k, st)
    }

    /// (B, O, PH, PW).
    pub fn output_shape(&self, s: &Conv2dShape) -> [usize; 4] {
        let (ph, pw) = self.pooled_size(s);
        [s.batch, s.out_channels, ph, pw]
    }
}
