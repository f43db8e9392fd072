//! Pickles.
//!
//! Candle's `pickle::Stack` cannot be used as is: its SETITEMS inserts each batch of dict items in
//! reverse order (so a state dict would come out reversed), its LONG1 overflows on the 80-bit magic
//! number, its DICT opcode ignores its items, and it allocates whatever length a string claims.
//! The small machine below keeps Candle's `Object` tree (and its conventions: an `OrderedDict`
//! call becomes a `Dict`, BUILD of a dict with a dict merges them) but executes the opcodes in
//! order and checks every length, stack access, nesting depth and memo expansion against limits.

use super::tensors::brief;
use super::{truncated, PthError, Result};
use candle_core::pickle::Object;
use std::collections::HashMap;

/// Deepest nesting of containers accepted in a pickle (state dicts need about 10).
pub(super) const MAX_PICKLE_DEPTH: u32 = 200;
/// Most objects a pickle may create, counting memo copies (memoised objects are cloned).
pub(super) const MAX_PICKLE_NODES: u64 = 1 << 24;

/// Parses the pickle starting at `start`, returning the object and the offset after its STOP.
pub(super) fn parse_pickle(bytes: &[u8], start: usize, what: &str) -> Result<(Object, usize)> {
    let mut m = Machine {
        bytes,
        p: start,
        label: format!("{what} pickle"),
        at: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        total: 0,
    };
    let obj = m.run()?;
    Ok((obj, m.p))
}

/// An object on the machine's stack with its nesting depth and size in nodes.
pub(super) struct Slot {
    obj: Object,
    depth: u32,
    nodes: u64,
}

impl Slot {
    fn leaf(obj: Object) -> Self {
        Slot { obj, depth: 1, nodes: 1 }
    }

    /// A container holding `children`.
    fn of(children: Vec<Slot>, make: impl FnOnce(Vec<Object>) -> Object) -> Self {
        let depth = 1 + children.iter().map(|s| s.depth).max().unwrap_or(0);
        let nodes = children.iter().fold(1u64, |n, s| n.saturating_add(s.nodes));
        Slot { obj: make(children.into_iter().map(|s| s.obj).collect()), depth, nodes }
    }
}

pub(super) struct Machine<'a> {
    bytes: &'a [u8],
    /// Next byte to read.
    p: usize,
    label: String,
    /// Offset of the opcode being executed, for messages.
    at: usize,
    stack: Vec<Slot>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Slot>,
    total: u64,
}

impl Machine<'_> {
    fn corrupt(&self, msg: impl std::fmt::Display) -> PthError {
        PthError::Corrupt(format!("{}, byte {}: {msg}", self.label, self.at))
    }

    fn unsupported(&self, msg: impl std::fmt::Display) -> PthError {
        PthError::Unsupported(format!("{}, byte {}: {msg}", self.label, self.at))
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let bytes = self.bytes;
        let s = self
            .p
            .checked_add(n)
            .and_then(|end| bytes.get(self.p..end))
            .ok_or_else(|| truncated(&self.label, bytes, self.p, n))?;
        self.p += n;
        Ok(s)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn line(&mut self) -> Result<String> {
        let rest = self.bytes.get(self.p..).unwrap_or(&[]);
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| truncated(&self.label, self.bytes, self.p, rest.len() + 1))?;
        let s = self.text(&rest[..n])?;
        self.p += n + 1;
        Ok(s)
    }

    fn text(&self, b: &[u8]) -> Result<String> {
        std::str::from_utf8(b).map(str::to_string).map_err(|_| self.corrupt("string is not valid UTF-8"))
    }

    fn push(&mut self, slot: Slot) -> Result<()> {
        if slot.depth > MAX_PICKLE_DEPTH {
            return Err(self.unsupported(format!("objects nested deeper than {MAX_PICKLE_DEPTH} levels")));
        }
        self.count(1)?;
        self.stack.push(slot);
        Ok(())
    }

    fn count(&mut self, nodes: u64) -> Result<()> {
        self.total = self.total.saturating_add(nodes);
        if self.total > MAX_PICKLE_NODES {
            return Err(self.unsupported(format!("pickle expands to more than {MAX_PICKLE_NODES} objects")));
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Slot> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.corrupt("pickle pops across a MARK"));
        }
        self.stack.pop().ok_or_else(|| self.corrupt("pickle stack underflow"))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Slot>> {
        let mut v = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>>>()?;
        v.reverse();
        Ok(v)
    }

    fn pop_mark(&mut self) -> Result<Vec<Slot>> {
        let m = self.marks.pop().ok_or_else(|| self.corrupt("pickle MARK not found"))?;
        Ok(self.stack.split_off(m))
    }

    fn top(&mut self) -> Result<&mut Slot> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.corrupt("pickle reads across a MARK"));
        }
        match self.stack.last_mut() {
            Some(s) => Ok(s),
            None => Err(PthError::Corrupt(format!("{}, byte {}: pickle stack underflow", self.label, self.at))),
        }
    }

    /// Adds `items` into the container on top of the stack (list or dict).
    fn extend_top(&mut self, items: Vec<Slot>, dict: bool) -> Result<()> {
        if dict && !items.len().is_multiple_of(2) {
            return Err(self.corrupt("dict items are not key/value pairs"));
        }
        let at = self.at;
        let label = self.label.clone();
        let top = self.top()?;
        let depth = items.iter().map(|s| s.depth + 1).max().unwrap_or(0);
        let nodes = items.iter().fold(0u64, |n, s| n.saturating_add(s.nodes));
        let mut objs = items.into_iter().map(|s| s.obj);
        match (&mut top.obj, dict) {
            (Object::List(v), false) => v.extend(objs),
            (Object::Dict(v), true) => {
                while let (Some(k), Some(val)) = (objs.next(), objs.next()) {
                    v.push((k, val));
                }
            }
            (other, _) => {
                return Err(PthError::Corrupt(format!("{label}, byte {at}: cannot add items to a {}", brief(other))))
            }
        }
        top.depth = top.depth.max(depth);
        top.nodes = top.nodes.saturating_add(nodes);
        if top.depth > MAX_PICKLE_DEPTH {
            return Err(self.unsupported(format!("objects nested deeper than {MAX_PICKLE_DEPTH} levels")));
        }
        Ok(())
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let top = self.top()?;
        let copy = Slot { obj: top.obj.clone(), depth: top.depth, nodes: top.nodes };
        self.count(copy.nodes)?;
        self.memo.insert(id, copy);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<()> {
        let slot = self.memo.get(&id).ok_or_else(|| self.corrupt(format!("memo entry {id} used before it is set")))?;
        let copy = Slot { obj: slot.obj.clone(), depth: slot.depth, nodes: slot.nodes };
        self.count(copy.nodes)?;
        self.push(copy)
    }

    /// Runs to STOP and returns the object on top of the stack.
    fn run(&mut self) -> Result<Object> {
        loop {
            self.at = self.p;
            let op = self.take(1)?[0];
            match op {
                // PROTO
                0x80 => {
                    self.take(1)?;
                }
                // FRAME (protocol 4): a length hint only.
                0x95 => {
                    self.take(8)?;
                }
                // GLOBAL
                b'c' => {
                    let module_name = self.line()?;
                    let class_name = self.line()?;
                    self.push(Slot::leaf(Object::Class { module_name, class_name }))?;
                }
                // STACK_GLOBAL (protocol 4)
                0x93 => {
                    let v = self.pop_n(2)?;
                    let mut names = v.into_iter().map(|s| match s.obj {
                        Object::Unicode(s) => Some(s),
                        _ => None,
                    });
                    match (names.next().flatten(), names.next().flatten()) {
                        (Some(module_name), Some(class_name)) => {
                            self.push(Slot::leaf(Object::Class { module_name, class_name }))?
                        }
                        _ => return Err(self.corrupt("STACK_GLOBAL needs two strings")),
                    }
                }
                // BININT1, BININT2, BININT
                b'K' => {
                    let v = self.take(1)?[0] as i32;
                    self.push(Slot::leaf(Object::Int(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?) as i32;
                    self.push(Slot::leaf(Object::Int(v)))?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Slot::leaf(Object::Int(v)))?;
                }
                // LONG1: little-endian two's complement of n bytes.
                0x8a => {
                    let n = self.take(1)?[0] as usize;
                    if n > 8 {
                        return Err(self.unsupported(format!("integer of {n} bytes")));
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Slot::leaf(Object::Long(v)))?;
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Slot::leaf(Object::Float(v)))?;
                }
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                0x8c | b'X' | 0x8d => {
                    let n = match op {
                        0x8c => self.take(1)?[0] as u64,
                        b'X' => u32::from_le_bytes(self.take_array()?) as u64,
                        _ => u64::from_le_bytes(self.take_array()?),
                    };
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    let b = self.take(n)?.to_vec();
                    let s = self.text(&b)?;
                    self.push(Slot::leaf(Object::Unicode(s)))?;
                }
                b'N' => self.push(Slot::leaf(Object::None))?,
                0x88 => self.push(Slot::leaf(Object::Bool(true)))?,
                0x89 => self.push(Slot::leaf(Object::Bool(false)))?,
                b')' => self.push(Slot::leaf(Object::Tuple(vec![])))?,
                b']' => self.push(Slot::leaf(Object::List(vec![])))?,
                b'}' => self.push(Slot::leaf(Object::Dict(vec![])))?,
                // MARK, POP, POP_MARK, DUP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    let copy = Slot { obj: top.obj.clone(), depth: top.depth, nodes: top.nodes };
                    self.count(copy.nodes)?;
                    self.push(copy)?;
                }
                // BINPERSID
                b'Q' => {
                    let v = self.pop_n(1)?;
                    let s = Slot::of(v, |mut o| Object::PersistentLoad(Box::new(o.remove(0))));
                    self.push(s)?;
                }
                // TUPLE, TUPLE1-3, LIST, DICT
                b't' | b'l' | b'd' => {
                    let v = self.pop_mark()?;
                    let s = match op {
                        b't' => Slot::of(v, Object::Tuple),
                        b'l' => Slot::of(v, Object::List),
                        _ => {
                            if !v.len().is_multiple_of(2) {
                                return Err(self.corrupt("dict items are not key/value pairs"));
                            }
                            Slot::of(v, |o| {
                                let mut it = o.into_iter();
                                let mut d = Vec::new();
                                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                    d.push((k, v));
                                }
                                Object::Dict(d)
                            })
                        }
                    };
                    self.push(s)?;
                }
                0x85..=0x87 => {
                    let v = self.pop_n((op - 0x84) as usize)?;
                    self.push(Slot::of(v, Object::Tuple))?;
                }
                // REDUCE, NEWOBJ: callable(*args)
                b'R' | 0x81 => {
                    let v = self.pop_n(2)?;
                    let is_dict = matches!(&v[0].obj, Object::Class { module_name, class_name }
                        if module_name == "collections"
                            && (class_name == "OrderedDict" || class_name == "defaultdict"));
                    let s = if is_dict {
                        Slot::leaf(Object::Dict(vec![]))
                    } else {
                        Slot::of(v, |mut o| {
                            let args = o.pop().unwrap_or(Object::None);
                            let callable = o.pop().unwrap_or(Object::None);
                            Object::Reduce { callable: Box::new(callable), args: Box::new(args) }
                        })
                    };
                    self.push(s)?;
                }
                // BUILD: obj.__setstate__(state); a dict state on a dict merges into it.
                b'b' => {
                    let v = self.pop_n(2)?;
                    let s = Slot::of(v, |mut o| {
                        let state = o.pop().unwrap_or(Object::None);
                        let obj = o.pop().unwrap_or(Object::None);
                        match (obj, state) {
                            (Object::Dict(mut d), Object::Dict(mut s)) => {
                                d.append(&mut s);
                                Object::Dict(d)
                            }
                            (obj, state) => Object::Build { callable: Box::new(obj), args: Box::new(state) },
                        }
                    });
                    self.push(s)?;
                }
                // APPEND, APPENDS, SETITEM, SETITEMS
                b'a' => {
                    let v = self.pop_n(1)?;
                    self.extend_top(v, false)?;
                }
                b'e' => {
                    let v = self.pop_mark()?;
                    self.extend_top(v, false)?;
                }
                b's' => {
                    let v = self.pop_n(2)?;
                    self.extend_top(v, true)?;
                }
                b'u' => {
                    let v = self.pop_mark()?;
                    self.extend_top(v, true)?;
                }
                // BINGET, LONG_BINGET, BINPUT, LONG_BINPUT, MEMOIZE
                b'h' => {
                    let id = self.take(1)?[0] as u32;
                    self.memo_get(id)?;
                }
                b'j' => {
                    let id = u32::from_le_bytes(self.take_array()?);
                    self.memo_get(id)?;
                }
                b'q' => {
                    let id = self.take(1)?[0] as u32;
                    self.memo_put(id)?;
                }
                b'r' => {
                    let id = u32::from_le_bytes(self.take_array()?);
                    self.memo_put(id)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len()).map_err(|_| self.corrupt("memo overflow"))?;
                    self.memo_put(id)?;
                }
                // STOP
                b'.' => {
                    return match self.stack.pop() {
                        Some(s) if self.marks.is_empty() => Ok(s.obj),
                        Some(_) => Err(self.corrupt("pickle stops with an open MARK")),
                        None => Err(self.corrupt("pickle stops with an empty stack")),
                    };
                }
                // Other valid opcodes (text protocol 0, bytes, sets, extensions, buffers).
                b'F'
                | b'I'
                | b'L'
                | b'P'
                | b'S'
                | b'T'
                | b'U'
                | b'V'
                | b'g'
                | b'i'
                | b'o'
                | b'p'
                | b'B'
                | b'C'
                | 0x82..=0x84
                | 0x8b
                | 0x8e..=0x92
                | 0x96..=0x98 => return Err(self.unsupported(format!("pickle opcode 0x{op:02x} is not supported"))),
                _ => return Err(self.corrupt(format!("invalid pickle opcode 0x{op:02x}"))),
            }
        }
    }
}
