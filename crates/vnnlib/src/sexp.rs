//! S-expressions with their positions: the syntax layer of VNN-LIB (SMT-LIB 2 subset).

use crate::ParseError;

/// A line and column (both from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub col: usize,
}

/// An atom or a parenthesised list.
#[derive(Debug, Clone, PartialEq)]
pub enum Sexp {
    /// A symbol or number.
    Atom(String, Pos),
    /// `( ... )`, positioned at its opening parenthesis.
    List(Vec<Sexp>, Pos),
}

impl Sexp {
    /// Where the expression starts.
    pub fn pos(&self) -> Pos {
        match self {
            Sexp::Atom(_, p) | Sexp::List(_, p) => *p,
        }
    }
}

/// Parses a whole file into its top-level expressions. `;` starts a comment to the end of line.
pub fn parse(text: &str) -> Result<Vec<Sexp>, ParseError> {
    let mut stack: Vec<(Vec<Sexp>, Pos)> = Vec::new();
    let mut top = Vec::new();
    let (mut line, mut col) = (1usize, 0usize);
    let mut chars = text.chars().peekable();
    let mut atom: Option<(String, Pos)> = None;
    let flush = |atom: &mut Option<(String, Pos)>, stack: &mut Vec<(Vec<Sexp>, Pos)>, top: &mut Vec<Sexp>| {
        if let Some((s, p)) = atom.take() {
            match stack.last_mut() {
                Some((items, _)) => items.push(Sexp::Atom(s, p)),
                None => top.push(Sexp::Atom(s, p)),
            }
        }
    };
    while let Some(c) = chars.next() {
        col += 1;
        let here = Pos { line, col };
        match c {
            '\n' => {
                flush(&mut atom, &mut stack, &mut top);
                line += 1;
                col = 0;
            }
            ';' => {
                flush(&mut atom, &mut stack, &mut top);
                while let Some(&n) = chars.peek() {
                    if n == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            '(' => {
                flush(&mut atom, &mut stack, &mut top);
                stack.push((Vec::new(), here));
            }
            ')' => {
                flush(&mut atom, &mut stack, &mut top);
                let (items, p) = stack.pop().ok_or_else(|| ParseError::at(here, "unmatched `)`"))?;
                let list = Sexp::List(items, p);
                match stack.last_mut() {
                    Some((items, _)) => items.push(list),
                    None => top.push(list),
                }
            }
            c if c.is_whitespace() => flush(&mut atom, &mut stack, &mut top),
            c => match &mut atom {
                Some((s, _)) => s.push(c),
                None => atom = Some((c.to_string(), here)),
            },
        }
    }
    flush(&mut atom, &mut stack, &mut top);
    if let Some((_, p)) = stack.last() {
        return Err(ParseError::at(*p, "this `(` is never closed"));
    }
    Ok(top)
}
