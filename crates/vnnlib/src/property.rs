//! The meaning of a VNN-LIB file: declarations of `X_i` (inputs) and `Y_j` (outputs), and
//! assertions whose conjunction describes the *unsafe* set, normalised to a disjunction of
//! conjunctions of linear inequalities `Σ a_i X_i + Σ b_j Y_j ≤ r` (or `<`).

use crate::sexp::{Pos, Sexp};
use crate::ParseError;
use std::collections::BTreeMap;

/// Most clauses a property may expand to (conjunctions of disjunctions multiply out).
pub const MAX_CLAUSES: usize = 100_000;

/// One linear inequality `Σ x_coef·X + Σ y_coef·Y ≤ rhs` (`< rhs` when `strict`).
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    /// Non-zero coefficients of the inputs, by index.
    pub x: Vec<(usize, f64)>,
    /// Non-zero coefficients of the outputs, by index.
    pub y: Vec<(usize, f64)>,
    /// Right-hand side.
    pub rhs: f64,
    /// `<` instead of `≤`.
    pub strict: bool,
    /// Where the inequality was written.
    pub pos: Pos,
}

impl Constraint {
    /// `Σ a X + Σ b Y - rhs` at a point (`≤ 0`, or `< 0` when strict, means it holds).
    pub fn slack(&self, x: &[f64], y: &[f64]) -> f64 {
        let sx: f64 = self.x.iter().map(|&(i, a)| a * x[i]).sum();
        let sy: f64 = self.y.iter().map(|&(j, b)| b * y[j]).sum();
        sx + sy - self.rhs
    }

    /// Does the point satisfy the inequality (exactly, in f64)?
    pub fn holds(&self, x: &[f64], y: &[f64]) -> bool {
        let s = self.slack(x, y);
        if self.strict {
            s < 0.0
        } else {
            s <= 0.0
        }
    }

    /// A bound on one input alone: `Some((i, lower, upper))` with one side infinite.
    pub fn input_bound(&self) -> Option<(usize, f64, f64)> {
        match (&self.x[..], &self.y[..]) {
            ([(i, a)], []) if *a > 0.0 => Some((*i, f64::NEG_INFINITY, self.rhs / a)),
            ([(i, a)], []) if *a < 0.0 => Some((*i, self.rhs / a, f64::INFINITY)),
            _ => None,
        }
    }
}

/// A conjunction of inequalities.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Clause {
    /// All must hold.
    pub constraints: Vec<Constraint>,
}

impl Clause {
    /// Does the point satisfy every inequality?
    pub fn holds(&self, x: &[f64], y: &[f64]) -> bool {
        self.constraints.iter().all(|c| c.holds(x, y))
    }

    /// The box `[lo, hi]` given by the clause's single-input bounds (infinite where none).
    pub fn input_box(&self, n: usize) -> (Vec<f64>, Vec<f64>) {
        let (mut lo, mut hi) = (vec![f64::NEG_INFINITY; n], vec![f64::INFINITY; n]);
        for c in &self.constraints {
            if let Some((i, l, h)) = c.input_bound() {
                lo[i] = lo[i].max(l);
                hi[i] = hi[i].min(h);
            }
        }
        (lo, hi)
    }

    /// The inequalities that are not single-input bounds (over outputs, or mixed).
    pub fn other_constraints(&self) -> impl Iterator<Item = &Constraint> {
        self.constraints.iter().filter(|c| c.input_bound().is_none())
    }
}

/// A property: the unsafe set is the union of the clauses (each a conjunction).
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    /// Number of inputs `X_0 … X_{n-1}`.
    pub num_inputs: usize,
    /// Number of outputs `Y_0 … Y_{m-1}`.
    pub num_outputs: usize,
    /// The disjunction.
    pub clauses: Vec<Clause>,
}

impl Property {
    /// Is the point `(x, y)` in the unsafe set? Returns the first clause it satisfies.
    pub fn violated_by(&self, x: &[f64], y: &[f64]) -> Option<usize> {
        self.clauses.iter().position(|c| c.holds(x, y))
    }
}

#[derive(Debug, Clone)]
enum Formula {
    And(Vec<Formula>),
    Or(Vec<Formula>),
    Atom(Constraint),
}

#[derive(Debug, Clone, Default)]
struct Lin {
    x: BTreeMap<usize, f64>,
    y: BTreeMap<usize, f64>,
    c: f64,
}

impl Lin {
    fn scale(mut self, k: f64) -> Lin {
        self.x.values_mut().for_each(|v| *v *= k);
        self.y.values_mut().for_each(|v| *v *= k);
        self.c *= k;
        self
    }
    fn add(mut self, o: Lin) -> Lin {
        for (i, v) in o.x {
            *self.x.entry(i).or_default() += v;
        }
        for (i, v) in o.y {
            *self.y.entry(i).or_default() += v;
        }
        self.c += o.c;
        self
    }
    fn is_const(&self) -> bool {
        self.x.values().all(|v| *v == 0.0) && self.y.values().all(|v| *v == 0.0)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Var {
    X(usize),
    Y(usize),
}

struct Ctx {
    vars: BTreeMap<String, Var>,
}

fn var_name(name: &str) -> Option<Var> {
    let (kind, idx) = name.split_at(name.find('_')?);
    let i: usize = idx[1..].parse().ok()?;
    if idx[1..].starts_with('+') || (idx.len() > 2 && idx[1..].starts_with('0')) {
        return None;
    }
    match kind {
        "X" => Some(Var::X(i)),
        "Y" => Some(Var::Y(i)),
        _ => None,
    }
}

fn number(s: &str) -> Option<f64> {
    let ok = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && s.chars().any(|c| c.is_ascii_digit());
    if !ok {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Ctx {
    fn term(&self, e: &Sexp) -> Result<Lin, ParseError> {
        match e {
            Sexp::Atom(s, p) => {
                if let Some(v) = number(s) {
                    return Ok(Lin { c: v, ..Lin::default() });
                }
                match self.vars.get(s) {
                    Some(Var::X(i)) => Ok(Lin { x: [(*i, 1.0)].into(), ..Lin::default() }),
                    Some(Var::Y(j)) => Ok(Lin { y: [(*j, 1.0)].into(), ..Lin::default() }),
                    None if var_name(s).is_some() => Err(ParseError::at(*p, format!("`{s}` is used but not declared"))),
                    None => Err(ParseError::at(*p, format!("expected a number or a declared variable, found `{s}`"))),
                }
            }
            Sexp::List(items, p) => {
                let (op, args) = head(items, *p)?;
                if args.is_empty() {
                    return Err(ParseError::at(*p, format!("`{op}` needs arguments")));
                }
                let terms = args.iter().map(|a| self.term(a)).collect::<Result<Vec<_>, _>>()?;
                match op {
                    "+" => Ok(terms.into_iter().fold(Lin::default(), Lin::add)),
                    "-" if terms.len() == 1 => Ok(terms.into_iter().next().unwrap().scale(-1.0)),
                    "-" => {
                        let mut it = terms.into_iter();
                        let first = it.next().unwrap();
                        Ok(it.fold(first, |a, b| a.add(b.scale(-1.0))))
                    }
                    "*" => {
                        let mut k = 1.0;
                        let mut var: Option<Lin> = None;
                        for (t, a) in terms.into_iter().zip(args) {
                            if t.is_const() {
                                k *= t.c;
                            } else if var.is_none() {
                                var = Some(t);
                            } else {
                                return Err(ParseError::at(a.pos(), "a product of two variables is not linear"));
                            }
                        }
                        Ok(match var {
                            Some(v) => v.scale(k),
                            None => Lin { c: k, ..Lin::default() },
                        })
                    }
                    other => Err(ParseError::at(*p, format!("unknown arithmetic operator `{other}`"))),
                }
            }
        }
    }

    fn formula(&self, e: &Sexp) -> Result<Formula, ParseError> {
        let Sexp::List(items, p) = e else {
            return Err(ParseError::at(e.pos(), "expected a condition such as `(<= Y_0 1)`"));
        };
        let (op, args) = head(items, *p)?;
        match op {
            "and" | "or" => {
                if args.is_empty() {
                    return Err(ParseError::at(*p, format!("`{op}` needs at least one condition")));
                }
                let fs = args.iter().map(|a| self.formula(a)).collect::<Result<Vec<_>, _>>()?;
                Ok(if op == "and" { Formula::And(fs) } else { Formula::Or(fs) })
            }
            "<=" | ">=" | "<" | ">" | "=" => {
                let [a, b] = args else {
                    return Err(ParseError::at(*p, format!("`{op}` takes two arguments, found {}", args.len())));
                };
                let (a, b) = (self.term(a)?, self.term(b)?);
                // a op b  →  d ≤ 0 with d = a - b (or b - a).
                let le = |d: Lin, strict: bool| {
                    let x = d.x.into_iter().filter(|(_, v)| *v != 0.0).collect();
                    let y = d.y.into_iter().filter(|(_, v)| *v != 0.0).collect();
                    Constraint { x, y, rhs: -d.c, strict, pos: *p }
                };
                let diff = a.clone().add(b.clone().scale(-1.0));
                let rev = b.add(a.scale(-1.0));
                Ok(match op {
                    "<=" => Formula::Atom(le(diff, false)),
                    "<" => Formula::Atom(le(diff, true)),
                    ">=" => Formula::Atom(le(rev, false)),
                    ">" => Formula::Atom(le(rev, true)),
                    _ => Formula::And(vec![Formula::Atom(le(diff, false)), Formula::Atom(le(rev, false))]),
                })
            }
            other => {
                Err(ParseError::at(*p, format!("unknown condition `{other}` (expected and, or, <=, >=, <, >, =)")))
            }
        }
    }
}

fn head(items: &[Sexp], p: Pos) -> Result<(&str, &[Sexp]), ParseError> {
    match items.split_first() {
        Some((Sexp::Atom(s, _), rest)) => Ok((s.as_str(), rest)),
        Some((other, _)) => Err(ParseError::at(other.pos(), "expected an operator name")),
        None => Err(ParseError::at(p, "empty expression `()`")),
    }
}

/// Disjunctive normal form: a list of conjunctions.
fn dnf(f: Formula, pos: Pos) -> Result<Vec<Vec<Constraint>>, ParseError> {
    Ok(match f {
        Formula::Atom(c) => vec![vec![c]],
        Formula::Or(fs) => {
            let mut out = Vec::new();
            for f in fs {
                out.extend(dnf(f, pos)?);
                if out.len() > MAX_CLAUSES {
                    return Err(ParseError::at(pos, format!("the property has more than {MAX_CLAUSES} clauses")));
                }
            }
            out
        }
        Formula::And(fs) => {
            // Parts with one clause are shared by every clause: collect them once.
            let mut common: Vec<Constraint> = Vec::new();
            let mut acc: Vec<Vec<Constraint>> = vec![vec![]];
            for f in fs {
                let mut d = dnf(f, pos)?;
                if d.len() == 1 {
                    common.append(&mut d[0]);
                    continue;
                }
                if acc.len().saturating_mul(d.len()) > MAX_CLAUSES {
                    return Err(ParseError::at(pos, format!("the property has more than {MAX_CLAUSES} clauses")));
                }
                acc = acc.iter().flat_map(|a| d.iter().map(move |b| [a.clone(), b.clone()].concat())).collect();
            }
            for a in acc.iter_mut() {
                let mut c = common.clone();
                c.append(a);
                *a = c;
            }
            acc
        }
    })
}

/// Interprets the top-level expressions of a VNN-LIB file.
pub fn interpret(top: &[Sexp]) -> Result<Property, ParseError> {
    let mut ctx = Ctx { vars: BTreeMap::new() };
    let mut asserts = Vec::new();
    let mut first_pos = Pos { line: 1, col: 1 };
    for (k, e) in top.iter().enumerate() {
        if k == 0 {
            first_pos = e.pos();
        }
        let Sexp::List(items, p) = e else {
            return Err(ParseError::at(e.pos(), "expected `(declare-const …)` or `(assert …)` at the top level"));
        };
        let (op, args) = head(items, *p)?;
        match op {
            "declare-const" => {
                let [Sexp::Atom(name, np), Sexp::Atom(sort, sp)] = args else {
                    return Err(ParseError::at(*p, "expected `(declare-const NAME Real)`"));
                };
                if sort != "Real" {
                    return Err(ParseError::at(*sp, format!("only `Real` constants are supported, found `{sort}`")));
                }
                let v = var_name(name)
                    .ok_or_else(|| ParseError::at(*np, format!("variables are named X_i or Y_j, found `{name}`")))?;
                if ctx.vars.insert(name.clone(), v).is_some() {
                    return Err(ParseError::at(*np, format!("`{name}` is declared twice")));
                }
            }
            "assert" => {
                let [f] = args else {
                    return Err(ParseError::at(*p, format!("`assert` takes one condition, found {}", args.len())));
                };
                asserts.push((ctx.formula(f)?, *p));
            }
            other => return Err(ParseError::at(*p, format!("unknown command `{other}`"))),
        }
    }
    let count = |is_x: bool| {
        let idx: Vec<usize> = ctx
            .vars
            .values()
            .filter_map(|v| match (v, is_x) {
                (Var::X(i), true) | (Var::Y(i), false) => Some(*i),
                _ => None,
            })
            .collect();
        (idx.len(), idx.iter().max().map_or(0, |m| m + 1))
    };
    let ((nx, mx), (ny, my)) = (count(true), count(false));
    if nx != mx || ny != my {
        return Err(ParseError::at(
            first_pos,
            "the declared variables must be X_0 … X_{n-1} and Y_0 … Y_{m-1} with no gaps",
        ));
    }
    if nx == 0 || ny == 0 {
        return Err(ParseError::at(first_pos, "the property must declare at least one X_i and one Y_j"));
    }
    if asserts.is_empty() {
        return Err(ParseError::at(first_pos, "the property has no assertion"));
    }
    let pos = asserts[0].1;
    let conj = Formula::And(asserts.into_iter().map(|(f, _)| f).collect());
    let clauses = dnf(conj, pos)?.into_iter().map(|constraints| Clause { constraints }).collect();
    Ok(Property { num_inputs: nx, num_outputs: ny, clauses })
}
