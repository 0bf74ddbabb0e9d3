//! The data every metric produces: named contenders with one sample per repetition.

use crate::stats::Summary;

/// Which direction of a metric's value is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    Lower,
    Higher,
}

impl Better {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Better::Lower => "lower",
            Better::Higher => "higher",
        }
    }
}

/// One implementation measured for a metric (ppool or an anchor).
#[derive(Debug, Clone)]
pub(crate) struct Contender {
    pub(crate) name: String,
    pub(crate) samples: Vec<f64>,
}

impl Contender {
    pub(crate) fn is_ppool(&self) -> bool {
        self.name.starts_with("ppool")
    }

    pub(crate) fn summary(&self) -> Option<Summary> {
        Summary::of(&self.samples)
    }
}

/// Everything measured for one metric.
#[derive(Debug, Clone)]
pub(crate) struct MetricResult {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) better: Better,
    pub(crate) contenders: Vec<Contender>,
    pub(crate) notes: Vec<String>,
    /// Set when the contenders measure different quantities in different units: no
    /// ppool/anchor ratios and no chart panel.
    pub(crate) mixed_units: bool,
    /// A table of medians the metric prints instead of its list of contenders.
    pub(crate) table: Option<Table>,
    /// Further tables, each under its title, printed after `table` (also instead of the
    /// list of contenders).
    pub(crate) tables: Vec<(String, Table)>,
}

/// Medians laid out by the metric: one column per configuration, one row per quantity.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub(crate) columns: Vec<Column>,
    pub(crate) rows: Vec<TableRow>,
}

/// One configuration measured (a pool of one size).
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// Why this configuration produced no data or only part of it.
    pub(crate) error: Option<String>,
}

/// One quantity: a median per column.
#[derive(Debug, Clone)]
pub(crate) struct TableRow {
    pub(crate) label: String,
    pub(crate) cells: Vec<Cell>,
}

/// One median of a [`Table`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Value(f64),
    /// A word rather than a number (a goal's limit, whether it was met).
    Text(String),
    /// Not measured: its configuration failed first.
    Missing,
    /// The quantity does not exist for this configuration.
    NotApplicable,
}

impl MetricResult {
    pub(crate) fn new(
        id: &'static str,
        title: &'static str,
        unit: &'static str,
        better: Better,
    ) -> MetricResult {
        MetricResult {
            id,
            title,
            unit,
            better,
            contenders: Vec::new(),
            notes: Vec::new(),
            mixed_units: false,
            table: None,
            tables: Vec::new(),
        }
    }

    /// The samples of contender `name`, if it has any.
    pub(crate) fn samples(&self, name: &str) -> Option<&[f64]> {
        self.contenders
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.samples.as_slice())
    }

    /// Adds one sample to the contender `name`, creating it on first use.
    pub(crate) fn record(&mut self, name: &str, value: f64) {
        match self.contenders.iter_mut().find(|c| c.name == name) {
            Some(c) => c.samples.push(value),
            None => self.contenders.push(Contender {
                name: name.to_owned(),
                samples: vec![value],
            }),
        }
    }

    /// Adds a note once (notes repeated by later repetitions are dropped).
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The ppool contenders (usually exactly one).
    pub(crate) fn ppool(&self) -> impl Iterator<Item = &Contender> {
        self.contenders.iter().filter(|c| c.is_ppool())
    }

    /// The anchors: every contender that is not ppool.
    pub(crate) fn anchors(&self) -> impl Iterator<Item = &Contender> {
        self.contenders.iter().filter(|c| !c.is_ppool())
    }

    /// `ppool median / anchor median` for each anchor with data.
    pub(crate) fn ratios(&self) -> Vec<Ratio> {
        if self.mixed_units {
            return Vec::new();
        }
        let Some(ppool) = self.ppool().find_map(|c| c.summary()) else {
            return Vec::new();
        };
        self.anchors()
            .filter_map(|a| {
                let anchor = a.summary()?;
                (anchor.median != 0.0).then(|| Ratio {
                    anchor: a.name.clone(),
                    ppool_over_anchor: ppool.median / anchor.median,
                })
            })
            .collect()
    }

    /// How to read `ppool_over_anchor` for this metric.
    pub(crate) fn ratio_meaning(&self) -> &'static str {
        if self.mixed_units {
            return "no ratios: the contenders measure different quantities";
        }
        match self.better {
            Better::Lower => "ratio < 1 means ppool is better",
            Better::Higher => "ratio > 1 means ppool is better",
        }
    }
}

/// ppool's median divided by one anchor's median.
#[derive(Debug, Clone)]
pub(crate) struct Ratio {
    pub(crate) anchor: String,
    pub(crate) ppool_over_anchor: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_use_medians() {
        let mut m = MetricResult::new("x", "x", "us", Better::Lower);
        for v in [10.0, 12.0, 11.0] {
            m.record("ppool", v);
        }
        for v in [5.0, 5.5, 6.0] {
            m.record("raw pipe", v);
        }
        let r = m.ratios();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].anchor, "raw pipe");
        assert!((r[0].ppool_over_anchor - 2.0).abs() < 1e-12);
    }
}
