//! An ordered table of named tensors laid out back to back in one flat buffer. Parameters,
//! their gradients and the optimizer state share one table (so one offset finds a parameter, its
//! gradient and its momentum); BatchNorm running statistics have their own.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    /// Offset in elements from the start of the flat buffer.
    pub offset: usize,
}

impl TensorEntry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorTable {
    entries: Vec<TensorEntry>,
    index: HashMap<String, usize>,
    total: usize,
}

impl TensorTable {
    /// Appends a tensor and returns its index. Names are unique: a repeat is a bug in the graph.
    pub fn push(&mut self, name: impl Into<String>, shape: Vec<usize>) -> usize {
        let name = name.into();
        assert!(
            !self.index.contains_key(&name),
            "tensor {name} declared twice"
        );
        let entry = TensorEntry {
            name: name.clone(),
            shape,
            offset: self.total,
        };
        self.total += entry.len();
        self.index.insert(name, self.entries.len());
        self.entries.push(entry);
        self.entries.len() - 1
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    pub fn entry(&self, index: usize) -> &TensorEntry {
        &self.entries[index]
    }

    pub fn entries(&self) -> &[TensorEntry] {
        &self.entries
    }

    /// Total elements of the flat buffer.
    pub fn total(&self) -> usize {
        self.total
    }
}
