//! The 2-d example: the robust classifier certifies every training point; the PNG is written.

use experiments::toy2d::{run, separated_points, Toy2dConfig};
use rand::SeedableRng;

#[test]
fn points_are_separated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (p, y) = separated_points(12, 0.32, &mut rng);
    assert_eq!((p.len(), y.len()), (12, 12));
    for i in 0..12 {
        for j in 0..i {
            assert!((p[i][0] - p[j][0]).abs() + (p[i][1] - p[j][1]).abs() > 0.32);
        }
    }
}

#[test]
fn robust_classifier_certifies_every_training_point() {
    let png = std::env::temp_dir().join(format!("toy2d-{}.png", std::process::id()));
    let r = run(&Toy2dConfig { png: png.clone(), ..Default::default() }).unwrap();
    assert_eq!(r.robust_certified, r.points, "{r:?}");
    assert_eq!(r.robust_error, 0.0);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert!(bytes.len() > 5000);
    std::fs::remove_file(&png).ok();
}
