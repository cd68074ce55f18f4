//! Checking a recipe's values field by field, and finding a field's line in the TOML text it came
//! from, so that every error says which field of which table is wrong, and where.

use std::fmt::Display;
use std::ops::Range;

/// One step from a table to a field: a key, or a position in an array (of tables).
#[derive(Clone, Debug, PartialEq)]
pub enum Key {
    Name(String),
    Index(usize),
}

/// A field of a recipe that is wrong: where it is (`at`, in words: `[train]`, `stage 2
/// (unstructured)`), its keys from the top of the file (`stage`, 1, `train`, `lr`), and the problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub at: String,
    pub keys: Vec<Key>,
    /// the field's name below `at` (`train.lr`), empty for the table itself
    pub field: String,
    pub msg: String,
}

impl Problem {
    /// The problem in one line, without a position: "stage 2 (unstructured): `prune_every` = 0
    /// must be at least 1".
    pub fn message(&self) -> String {
        format!("{}: {}", self.at, self.msg)
    }

    /// The 1-based line of the field in `text` (the TOML the recipe was parsed from), or of the
    /// nearest enclosing table or key that is written there (a defaulted field has no line of its
    /// own). None when the text does not parse.
    pub fn line_in(&self, text: &str) -> Option<usize> {
        let doc = toml_edit::ImDocument::parse(text).ok()?;
        let span = locate(doc.as_table(), &self.keys)?;
        Some(text[..span.start.min(text.len())].matches('\n').count() + 1)
    }
}

/// The span of the deepest of `keys` that is written in `table`.
fn locate(table: &dyn toml_edit::TableLike, keys: &[Key]) -> Option<Range<usize>> {
    let (Key::Name(first), rest) = keys.split_first()? else {
        return None;
    };
    let (key, item) = table.get_key_value(first)?;
    let here = key.span().or_else(|| item.span());
    let deeper = match rest.split_first() {
        None => None,
        Some((Key::Index(i), rest)) => {
            if let Some(t) = item.as_array_of_tables().and_then(|a| a.get(*i)) {
                locate(t, rest).or_else(|| t.span())
            } else if let Some(v) = item.as_array().and_then(|a| a.get(*i)) {
                v.as_inline_table()
                    .and_then(|t| locate(t, rest))
                    .or_else(|| v.span())
            } else {
                None
            }
        }
        Some((Key::Name(_), _)) => item.as_table_like().and_then(|t| locate(t, rest)),
    };
    deeper.or(here)
}

/// The fields of one table of a recipe, checked one by one; the first problem is the error.
#[derive(Clone, Debug)]
pub struct Fields {
    at: String,
    keys: Vec<Key>,
    /// the dotted prefix of field names below `at` (`train.` inside a stage)
    prefix: String,
}

impl Fields {
    /// The top-level table `name`, called `at` in messages.
    pub fn table(at: impl Into<String>, name: &str) -> Self {
        Self {
            at: at.into(),
            keys: vec![Key::Name(name.into())],
            prefix: String::new(),
        }
    }

    /// Element `index` (0-based) of the array of tables `name`, called `at` in messages.
    pub fn element(at: impl Into<String>, name: &str, index: usize) -> Self {
        Self {
            at: at.into(),
            keys: vec![Key::Name(name.into()), Key::Index(index)],
            prefix: String::new(),
        }
    }

    /// The sub-table `name` of this one (a stage's `train`): same `at`, dotted field names.
    pub fn sub(&self, name: &str) -> Self {
        let mut keys = self.keys.clone();
        keys.push(Key::Name(name.into()));
        Self {
            at: self.at.clone(),
            keys,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    /// A problem with field `name` (None: the table itself).
    pub fn problem(&self, name: Option<&str>, msg: impl Into<String>) -> Problem {
        let mut keys = self.keys.clone();
        if let Some(n) = name {
            keys.push(Key::Name(n.into()));
        }
        Problem {
            at: self.at.clone(),
            keys,
            field: name.map_or_else(String::new, |n| format!("{}{n}", self.prefix)),
            msg: msg.into(),
        }
    }

    fn fail(&self, name: &str, value: impl Display, rule: &str) -> Result<(), Problem> {
        let field = format!("{}{name}", self.prefix);
        Err(self.problem(Some(name), format!("`{field}` = {value} {rule}")))
    }

    /// A count that must be at least `min` (steps, batch sizes, rounds: 0 would divide by zero or
    /// do nothing).
    pub fn at_least(&self, name: &str, v: usize, min: usize) -> Result<(), Problem> {
        if v < min {
            return self.fail(name, v, &format!("must be at least {min}"));
        }
        Ok(())
    }

    /// An optional count that, when given, must be at least `min`.
    pub fn at_least_opt(&self, name: &str, v: Option<usize>, min: usize) -> Result<(), Problem> {
        v.map_or(Ok(()), |v| self.at_least(name, v, min))
    }

    /// A count that must not exceed `max`.
    pub fn at_most(&self, name: &str, v: usize, max: usize) -> Result<(), Problem> {
        if v > max {
            return self.fail(name, v, &format!("must be at most {max}"));
        }
        Ok(())
    }

    /// A value in [lo, hi) (`closed_hi`: [lo, hi]).
    pub fn in_range(
        &self,
        name: &str,
        v: f64,
        lo: f64,
        hi: f64,
        closed_hi: bool,
    ) -> Result<(), Problem> {
        let ok = v >= lo && if closed_hi { v <= hi } else { v < hi };
        if !ok {
            let close = if closed_hi { ']' } else { ')' };
            return self.fail(name, v, &format!("is outside [{lo}, {hi}{close}"));
        }
        Ok(())
    }

    /// A value in (0, 1] (a fraction of something that must not be empty).
    pub fn fraction(&self, name: &str, v: f64) -> Result<(), Problem> {
        if !(v > 0.0 && v <= 1.0) {
            return self.fail(name, v, "is outside (0, 1]");
        }
        Ok(())
    }

    /// A finite value > 0 (learning rates, temperatures).
    pub fn positive(&self, name: &str, v: f64) -> Result<(), Problem> {
        if !(v > 0.0 && v.is_finite()) {
            return self.fail(name, v, "must be positive and finite");
        }
        Ok(())
    }

    /// A finite value >= 0 (weight decay, thresholds).
    pub fn non_negative(&self, name: &str, v: f64) -> Result<(), Problem> {
        if !(v >= 0.0 && v.is_finite()) {
            return self.fail(name, v, "must be finite and at least 0");
        }
        Ok(())
    }

    /// A name that must be one of `allowed`.
    pub fn one_of(&self, name: &str, v: &str, allowed: &[&str]) -> Result<(), Problem> {
        if !allowed.contains(&v) {
            return Err(self.problem(
                Some(name),
                format!("{name} `{v}` is not one of {}", allowed.join(", ")),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "seed = 1\n\
        [model]\n\
        arch = \"x\"\n\
        \n\
        [[stage]]\n\
        kind = \"a\"\n\
        \n\
        [[stage]]\n\
        kind = \"b\"\n\
        train = { epochs = 0, lr = 0.1 }\n\
        [stage.distill]\n\
        alpha = 2.0\n";

    fn line(keys: &[Key]) -> Option<usize> {
        Problem {
            at: String::new(),
            keys: keys.to_vec(),
            field: String::new(),
            msg: String::new(),
        }
        .line_in(TEXT)
    }

    fn name(s: &str) -> Key {
        Key::Name(s.into())
    }

    #[test]
    fn fields_are_found_on_their_lines() {
        assert_eq!(line(&[name("seed")]), Some(1));
        assert_eq!(line(&[name("model"), name("arch")]), Some(3));
        // a defaulted field: the line of its table
        assert_eq!(line(&[name("model"), name("classes")]), Some(2));
        assert_eq!(line(&[name("stage"), Key::Index(0), name("kind")]), Some(6));
        // inline tables and sub-tables of an array element
        let epochs = [name("stage"), Key::Index(1), name("train"), name("epochs")];
        assert_eq!(line(&epochs), Some(10));
        let alpha = [name("stage"), Key::Index(1), name("distill"), name("alpha")];
        assert_eq!(line(&alpha), Some(12));
        // a field of a stage that is not written: the stage's header
        assert_eq!(
            line(&[name("stage"), Key::Index(1), name("rounds")]),
            Some(8)
        );
        assert_eq!(line(&[name("nothing")]), None);
    }

    #[test]
    fn scopes_word_the_field() {
        let s = Fields::element("stage 2 (unstructured)", "stage", 1).sub("train");
        let p = s.at_least("epochs", 0, 1).unwrap_err();
        assert_eq!(
            p.message(),
            "stage 2 (unstructured): `train.epochs` = 0 must be at least 1"
        );
        assert_eq!(p.field, "train.epochs");
        assert!(s.positive("lr", f64::NAN).is_err());
        assert!(s.positive("lr", f64::INFINITY).is_err());
        assert!(s.positive("lr", 1e-3).is_ok());
        assert!(s.in_range("ratio", 1.0, 0.0, 1.0, false).is_err());
        assert!(s.in_range("ratio", 1.0, 0.0, 1.0, true).is_ok());
        assert!(s.in_range("ratio", f64::NAN, 0.0, 1.0, true).is_err());
        assert!(s.fraction("end_fraction", 0.0).is_err());
        assert!(s.non_negative("weight_decay", -0.0).is_ok());
    }
}
