//! A small network with three convolutions on 16×16 images, shared by the tests of the windowed
//! rows: the rows of the second and third convolutions' units live on small windows of the
//! layers below (CROWN's and the exact dual's backward form run them there;
//! `dual_core::bounds::rows_on_windows` counts them).

use nets::spec::build::{conv, flatten, linear, relu};
use nets::NetworkSpec;

pub fn deep_conv_spec() -> NetworkSpec {
    NetworkSpec::sequential(
        "deep-conv",
        &[1, 16, 16],
        vec![
            conv(1, 2, 3, 1, 1),
            relu(),
            conv(2, 3, 4, 2, 1),
            relu(),
            conv(3, 4, 3, 1, 1),
            relu(),
            flatten(),
            linear(256, 6),
            relu(),
            linear(6, 4),
        ],
    )
}
