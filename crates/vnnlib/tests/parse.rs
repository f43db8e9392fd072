//! The VNN-LIB parser: every construct, the normal form, the files of ../shared/vnncomp2021,
//! and malformed files with their line and column.

use vnnlib::{parse_file, parse_str, Constraint, ParseError};

const HEAD: &str =
    "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n";

fn parse(body: &str) -> vnnlib::Property {
    parse_str(&format!("{HEAD}{body}")).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> ParseError {
    parse_str(text).expect_err("must not parse")
}

fn only(c: &[Constraint]) -> &Constraint {
    assert_eq!(c.len(), 1);
    &c[0]
}

#[test]
fn declarations_and_box() {
    let p = parse("(assert (>= X_0 -1))\n(assert (<= X_0 1.5))\n(assert (<= X_1 2e-1))\n(assert (>= X_1 -0.5))\n(assert (<= Y_0 Y_1))");
    assert_eq!((p.num_inputs, p.num_outputs), (2, 2));
    assert_eq!(p.clauses.len(), 1);
    let (lo, hi) = p.clauses[0].input_box(2);
    assert_eq!(lo, [-1.0, -0.5]);
    assert_eq!(hi, [1.5, 0.2]);
    // Y_0 <= Y_1 is Y_0 - Y_1 <= 0.
    let c: Vec<&Constraint> = p.clauses[0].other_constraints().collect();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].y, [(0, 1.0), (1, -1.0)]);
    assert_eq!(c[0].rhs, 0.0);
    assert!(c[0].x.is_empty() && !c[0].strict);
}

#[test]
fn comparison_operators() {
    let p = parse("(assert (>= Y_0 3))");
    let c = only(&p.clauses[0].constraints);
    assert_eq!((c.y.clone(), c.rhs), (vec![(0, -1.0)], -3.0));
    let p = parse("(assert (< Y_0 3))");
    assert!(only(&p.clauses[0].constraints).strict);
    let p = parse("(assert (> Y_0 Y_1))");
    let c = only(&p.clauses[0].constraints);
    assert!(c.strict);
    assert_eq!(c.y, [(0, -1.0), (1, 1.0)]);
    // `=` is two inequalities.
    let p = parse("(assert (= Y_0 2))");
    assert_eq!(p.clauses[0].constraints.len(), 2);
    assert!(p.clauses[0].holds(&[0.0, 0.0], &[2.0, 0.0]));
    assert!(!p.clauses[0].holds(&[0.0, 0.0], &[2.5, 0.0]));
}

#[test]
fn linear_terms() {
    let p = parse("(assert (<= (+ (* 2 Y_0) (- Y_1) 1) (- (* Y_1 0.5) X_1 3)))");
    // 2 Y0 - Y1 + 1 <= 0.5 Y1 - X1 - 3  →  X1 + 2 Y0 - 1.5 Y1 <= -4
    let c = only(&p.clauses[0].constraints);
    assert_eq!(c.x, [(1, 1.0)]);
    assert_eq!(c.y, [(0, 2.0), (1, -1.5)]);
    assert_eq!(c.rhs, -4.0);
    assert_eq!(c.slack(&[0.0, 1.0], &[1.0, 2.0]), 1.0 + 2.0 - 3.0 + 4.0);
}

#[test]
fn disjunction_of_conjunctions_and_distribution() {
    let p = parse("(assert (<= X_0 1))\n(assert (or (and (<= Y_0 1) (>= Y_1 2)) (and (<= Y_1 0))))\n(assert (or (<= Y_0 5) (<= X_1 0)))");
    // (A ∧ B ∨ C) ∧ (D ∨ E) with the box shared: 4 clauses, each holding X_0 <= 1.
    assert_eq!(p.clauses.len(), 4);
    for c in &p.clauses {
        assert!(c.constraints.iter().any(|k| k.input_bound() == Some((0, f64::NEG_INFINITY, 1.0))));
    }
    assert_eq!(p.violated_by(&[0.0, 5.0], &[0.0, 3.0]), Some(0));
    assert_eq!(p.violated_by(&[0.0, 5.0], &[9.0, 3.0]), None);
    assert_eq!(p.violated_by(&[2.0, 0.0], &[0.0, 3.0]), None, "X_0 > 1 leaves the box");
}

#[test]
fn input_constraints_inside_clauses() {
    // As in vnncomp2021/test/test_small.vnnlib.
    let p = parse_str("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (or\n    (and (>= X_0 -1) (<= X_0 1) (>= Y_0 100))\n))").unwrap();
    let (lo, hi) = p.clauses[0].input_box(1);
    assert_eq!((lo, hi), (vec![-1.0], vec![1.0]));
    assert_eq!(p.clauses[0].other_constraints().count(), 1);
}

#[test]
fn every_vnncomp2021_property_parses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vnncomp2021");
    let mut n = 0;
    for bench in ["acasxu", "mnistfc", "test"] {
        for e in std::fs::read_dir(root.join(bench)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "vnnlib") {
                let prop = parse_file(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!prop.clauses.is_empty());
                for c in &prop.clauses {
                    let (lo, hi) = c.input_box(prop.num_inputs);
                    assert!(
                        lo.iter().zip(&hi).all(|(l, h)| l.is_finite() && h.is_finite() && l <= h),
                        "{}",
                        p.display()
                    );
                }
                n += 1;
            }
        }
    }
    assert_eq!(n, 10 + 30 + 4);
    let p = parse_file(root.join("mnistfc/prop_0_0.03.vnnlib")).unwrap();
    assert_eq!((p.num_inputs, p.num_outputs, p.clauses.len()), (784, 10, 9));
    let p = parse_file(root.join("acasxu/prop_7.vnnlib")).unwrap();
    assert_eq!((p.num_inputs, p.num_outputs, p.clauses.len()), (5, 5, 2));
}

#[test]
fn malformed_files_name_line_and_column() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 1)", 3, 1, "never closed"),
        ("(declare-const X_0 Real))", 1, 25, "unmatched"),
        (
            "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_1 1))",
            3,
            13,
            "`Y_1` is used but not declared",
        ),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 abc))", 3, 17, "expected a number"),
        ("(declare-const X_0 Int)\n(declare-const Y_0 Real)\n(assert (<= Y_0 1))", 1, 20, "only `Real`"),
        ("(declare-const Z_0 Real)", 1, 16, "X_i or Y_j"),
        ("(declare-const X_0 Real)\n(declare-const X_0 Real)", 2, 16, "declared twice"),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n  (assert (<= (* Y_0 X_0) 1))", 3, 22, "not linear"),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (=> Y_0 1))", 3, 9, "unknown condition `=>`"),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0))", 3, 9, "takes two arguments"),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(check-sat)", 3, 1, "unknown command"),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (and))", 3, 9, "at least one"),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert ())", 3, 9, "empty expression"),
        (
            "(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 1))",
            1,
            1,
            "no gaps",
        ),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)", 1, 1, "no assertion"),
        ("(declare-const X_0 Real) ; comment\n(declare-const Y_0 Real)\nassert", 3, 1, "at the top level"),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 1e999))", 3, 17, "expected a number"),
    ];
    for (text, line, col, msg) in cases {
        let e = err(text);
        assert!(e.msg.contains(msg), "{text:?}: message `{}` lacks `{msg}`", e.msg);
        assert_eq!((e.pos.line, e.pos.col), (*line, *col), "{text:?}: {e}");
        assert!(e.to_string().starts_with(&format!("line {line}, column {col}: ")));
    }
}

#[test]
fn missing_file_is_an_error_with_its_name() {
    let e = parse_file("/nonexistent/p.vnnlib").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/p.vnnlib") && e.msg.contains("cannot read"), "{e}");
}
