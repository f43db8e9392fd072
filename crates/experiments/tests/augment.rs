//! Data augmentation: flips and padded crops move pixels where they should and fill with the
//! pad value; with neither, images are untouched.

use experiments::datasets::Dataset;
use experiments::train::Augment;
use rand::{rngs::StdRng, SeedableRng};

fn ds(n: usize) -> Dataset {
    let (c, h, w) = (2, 5, 4);
    let images = (0..n * c * h * w).map(|i| i as f32).collect();
    Dataset { images, labels: vec![0; n], n, channels: c, height: h, width: w }
}

#[test]
fn no_augmentation_is_the_identity() {
    let mut d = ds(3);
    let before = d.clone();
    Augment { flip: false, crop_padding: 0, pad_value: vec![0.0] }.apply(&mut d, &mut StdRng::seed_from_u64(1));
    assert_eq!(d, before);
}

#[test]
fn flips_mirror_rows_and_crops_shift_with_padding() {
    let n = 200;
    let orig = ds(n);
    let (c, h, w) = (2usize, 5usize, 4usize);
    let size = c * h * w;
    // Flip only: every image is itself or its mirror, and both occur.
    let mut d = orig.clone();
    Augment { flip: true, crop_padding: 0, pad_value: vec![0.0] }.apply(&mut d, &mut StdRng::seed_from_u64(2));
    let mut flipped = 0;
    for e in 0..n {
        let (a, b) = (&orig.images[e * size..][..size], &d.images[e * size..][..size]);
        let mirror = (0..size).all(|i| {
            let (ch, r, col) = (i / (h * w), (i / w) % h, i % w);
            b[i] == a[ch * h * w + r * w + (w - 1 - col)]
        });
        assert!(mirror || a == b, "example {e} is neither itself nor its mirror");
        flipped += mirror as usize;
    }
    assert!((60..140).contains(&flipped), "{flipped} of {n} flipped");
    // Crop only: each image is a shifted copy; pixels shifted in from outside are the pad value
    // of their channel.
    let mut d = orig.clone();
    Augment { flip: false, crop_padding: 2, pad_value: vec![-1.0, -2.0] }.apply(&mut d, &mut StdRng::seed_from_u64(3));
    let mut shifted = 0;
    for e in 0..n {
        let (a, b) = (&orig.images[e * size..][..size], &d.images[e * size..][..size]);
        let found = (-2isize..=2).flat_map(|dy| (-2isize..=2).map(move |dx| (dy, dx))).find(|&(dy, dx)| {
            (0..size).all(|i| {
                let (ch, r, col) = (i / (h * w), ((i / w) % h) as isize, (i % w) as isize);
                let (sr, sc) = (r + dy, col + dx);
                let want = if sr < 0 || sc < 0 || sr >= h as isize || sc >= w as isize {
                    [-1.0, -2.0][ch]
                } else {
                    a[ch * h * w + sr as usize * w + sc as usize]
                };
                b[i] == want
            })
        });
        let (dy, dx) = found.unwrap_or_else(|| panic!("example {e} is not a padded crop"));
        shifted += (dy != 0 || dx != 0) as usize;
    }
    assert!(shifted > n / 2, "{shifted} of {n} shifted");
}
