//! The projection's tables as the writers see them: each table's columns
//! in one order, and each row as cells in that order, so the PostgreSQL
//! writer (rows as JSON) and the SQLite writer (rows as bound values)
//! can never disagree on which value goes to which column.

use postback_core::model::ServerSideStatus;
use serde::ser::{Serialize, Serializer};

use super::{ConversionKey, ConversionState, PlatformState};
use crate::store::StatusRow;
use crate::{fold, keys};

/// A column of a table: PostgreSQL casts JSON's integers, SQLite does not
/// need to.
#[derive(Clone, Copy)]
pub(crate) enum Column {
    Int(&'static str),
    Text(&'static str),
}

impl Column {
    pub fn name(self) -> &'static str {
        match self {
            Column::Int(n) | Column::Text(n) => n,
        }
    }
}

/// A value of a row, in its column's place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
}

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Int(v) => v.serialize(s),
            Cell::Text(v) => v.serialize(s),
        }
    }
}

impl rusqlite::ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Cell::Int(v) => v.to_sql(),
            Cell::Text(v) => v.to_sql(),
        }
    }
}

fn int(v: impl Into<i64>) -> Cell<'static> {
    Cell::Int(Some(v.into()))
}

fn text(v: &str) -> Cell<'_> {
    Cell::Text(Some(v))
}

/// What an insert does with a row whose key is there already.
pub(crate) enum OnConflict {
    /// Keeps the stored row: the history and the click ids never change.
    Keep,
    /// Replaces every column but the key and these, which only the
    /// insert writes: the row was folded in memory from the stored one.
    Replace(&'static [&'static str]),
    /// Adds these columns to the stored ones: the rollups' counts.
    Add(&'static [&'static str]),
}

pub(crate) struct Table {
    pub name: &'static str,
    /// The primary key's columns, comma separated.
    pub key: &'static str,
    pub columns: &'static [Column],
    pub on_conflict: OnConflict,
}

impl Table {
    /// `ON CONFLICT (key) DO ...`, the end of every insert into the table.
    pub fn conflict_clause(&self) -> String {
        let set: Vec<String> = match self.on_conflict {
            OnConflict::Keep => return format!("ON CONFLICT ({}) DO NOTHING", self.key),
            OnConflict::Replace(fixed) => self
                .columns
                .iter()
                .map(|c| c.name())
                .filter(|c| !self.key.split(", ").any(|k| k == *c) && !fixed.contains(c))
                .map(|c| format!("{c} = excluded.{c}"))
                .collect(),
            OnConflict::Add(columns) => columns
                .iter()
                .map(|c| format!("{c} = {}.{c} + excluded.{c}", self.name))
                .collect(),
        };
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            self.key,
            set.join(", ")
        )
    }

    pub fn column_names(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name()).collect();
        names.join(", ")
    }
}

use Column::{Int, Text};

pub(crate) const HISTORY: Table = Table {
    name: "status_history",
    key: "conversion_id, src_partition, src_offset",
    columns: &[
        Int("conversion_id"),
        Int("src_partition"),
        Int("src_offset"),
        Text("platform"),
        Text("stage"),
        Text("server_side"),
        Text("front_end"),
        Text("reason"),
        Int("attempt"),
        Int("next_attempt_at"),
        Text("duplicate_of"),
        Text("reported_by"),
        Text("platform_request_id"),
        Int("status_time"),
    ],
    on_conflict: OnConflict::Keep,
};

pub(crate) fn history_cells(conversion: i64, row: &StatusRow) -> [Cell<'_>; 14] {
    let s = &row.status;
    [
        int(conversion),
        int(row.partition),
        int(row.offset),
        text(&s.platform),
        text(&s.stage),
        text(fold::server_side_name(s.server_side)),
        Cell::Text(
            s.front_end
                .map(|f| fold::front_end_name(fold::front_end_rank(Some(f)))),
        ),
        Cell::Text(s.reason.as_deref()),
        Cell::Int(s.attempt.map(i64::from)),
        Cell::Int(s.next_attempt_at),
        Cell::Text(s.duplicate_of.as_deref()),
        Cell::Text(s.reported_by.as_deref()),
        Cell::Text(s.platform_request_id.as_deref()),
        int(s.time),
    ]
}

/// Whether a record is a repeat the deduplicator dropped: the platform
/// counts those the history did not hold yet.
pub(crate) fn is_duplicate(row: &StatusRow) -> bool {
    row.status.server_side == ServerSideStatus::Duplicate
}

pub(crate) const CONVERSIONS: Table = Table {
    name: "conversions",
    key: "id",
    columns: &[
        Int("id"),
        Text("tenant"),
        Text("event_name"),
        Text("event_id"),
        Int("key_hash"),
        Int("sort_time"),
        Int("first_seen"),
        Int("event_time"),
        Text("value"),
        Text("currency"),
        Text("order_id"),
        Int("order_hash"),
        Text("sources"),
        Text("summary_key"),
    ],
    // A number stands for one key for ever: its index stays as it is.
    on_conflict: OnConflict::Replace(&["tenant", "event_name", "event_id", "key_hash"]),
};

/// The columns of `CONVERSIONS` the key decides, which a stored
/// conversion's state comes after.
pub(crate) const CONVERSION_KEY_COLUMNS: usize = 5;

pub(crate) fn conversion_cells<'a>(
    id: i64,
    (tenant, event_name, event_id): ConversionKey<'a>,
    c: &'a ConversionState,
) -> [Cell<'a>; 14] {
    [
        int(id),
        text(tenant),
        text(event_name),
        text(event_id),
        int(keys::event_id_hash(tenant, event_id)),
        int(c.sort_time),
        int(c.first_seen),
        Cell::Int(c.event_time),
        Cell::Text(c.value.as_deref()),
        Cell::Text(c.currency.as_deref()),
        Cell::Text(c.order_id.as_deref()),
        Cell::Int(
            c.order_id
                .as_deref()
                .map(|o| keys::order_id_hash(tenant, o)),
        ),
        text(&c.sources),
        text(c.summary_key.as_str()),
    ]
}

pub(crate) const PLATFORMS: Table = Table {
    name: "platform_states",
    key: "conversion_id, platform",
    columns: &[
        Int("conversion_id"),
        Text("platform"),
        Int("front_end_rank"),
        Text("server_side"),
        Text("stage"),
        Text("reason"),
        Int("attempt"),
        Int("next_attempt_at"),
        Text("platform_request_id"),
        Int("status_time"),
        Text("status_key"),
        Int("delivered_at"),
        Int("latency_bucket"),
        Text("match_keys"),
        Text("match_keys_key"),
        Int("duplicates"),
    ],
    on_conflict: OnConflict::Replace(&[]),
};

pub(crate) fn platform_cells<'a>(
    conversion: i64,
    platform: &'a str,
    p: &'a PlatformState,
) -> [Cell<'a>; 16] {
    [
        int(conversion),
        text(platform),
        int(p.front_end_rank),
        text(p.server_side),
        Cell::Text(p.stage.as_deref()),
        Cell::Text(p.reason.as_deref()),
        Cell::Int(p.attempt),
        Cell::Int(p.next_attempt_at),
        Cell::Text(p.platform_request_id.as_deref()),
        Cell::Int(p.status_time),
        text(p.status_key.as_str()),
        Cell::Int(p.delivered_at),
        Cell::Int(p.latency_bucket),
        text(&p.match_keys),
        text(p.match_keys_key.as_str()),
        int(p.duplicates),
    ]
}

pub(crate) const CLICK_IDS: Table = Table {
    name: "click_ids",
    key: "click_key, conversion_id",
    columns: &[Int("click_key"), Int("conversion_id")],
    on_conflict: OnConflict::Keep,
};

/// A hashed click id of a conversion: `keys::click_key`, conversion's
/// number.
pub(crate) type ClickId = (i64, i64);

pub(crate) fn click_id_cells((key, id): &ClickId) -> [Cell<'static>; 2] {
    [int(*key), int(*id)]
}

/// The rollups' rows are their key (`ROLLUPS.key`, the first columns),
/// then the counts.
pub(crate) const ROLLUP_KEY_COLUMNS: usize = 9;

/// Whether a rollup delta takes away from its row, which may then count
/// nothing: a conversion left the state (its hour, its status) the row
/// counts. Such a row is deleted once it is zero (`emptied_rollup`), or
/// every state a conversion passes through would leave a row behind.
pub(crate) fn takes_away(cells: &[Cell<'_>; 11]) -> bool {
    cells[ROLLUP_KEY_COLUMNS..]
        .iter()
        .any(|c| matches!(c, Cell::Int(Some(n)) if *n < 0))
}

/// What makes a rollup row empty: no conversion, no duplicate; `table`
/// is how the statement names the table (`t.`, or empty).
pub(crate) fn emptied_rollup(table: &str) -> String {
    format!("{table}n = 0 AND {table}duplicates = 0")
}

pub(crate) const ROLLUPS: Table = Table {
    name: "summary_rollups",
    key: "tenant, width, slot, platform, server_side, reason, front_end_fired, latency, merged",
    columns: &[
        Text("tenant"),
        Int("width"),
        Int("slot"),
        Text("platform"),
        Text("server_side"),
        Text("reason"),
        Int("front_end_fired"),
        Int("latency"),
        Int("merged"),
        Int("n"),
        Int("duplicates"),
    ],
    on_conflict: OnConflict::Add(&["n", "duplicates"]),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_says_what_a_conflict_does() {
        assert_eq!(
            HISTORY.conflict_clause(),
            "ON CONFLICT (conversion_id, src_partition, src_offset) DO NOTHING"
        );
        let replace = CONVERSIONS.conflict_clause();
        assert!(
            replace.starts_with("ON CONFLICT (id) DO UPDATE SET sort_time = excluded.sort_time, ")
        );
        assert!(!replace.contains("tenant = "), "{replace}");
        assert!(!replace.contains("event_id = "), "{replace}");
        assert!(PLATFORMS
            .conflict_clause()
            .starts_with("ON CONFLICT (conversion_id, platform) DO UPDATE SET front_end_rank = "));
        assert!(replace.ends_with("summary_key = excluded.summary_key"));
        assert!(ROLLUPS.conflict_clause().ends_with(
            "DO UPDATE SET n = summary_rollups.n + excluded.n, \
             duplicates = summary_rollups.duplicates + excluded.duplicates"
        ));
    }

    #[test]
    fn every_row_has_a_cell_for_each_column() {
        let key = ("t", "Purchase", "e");
        let c = ConversionState::first_seen_at(1);
        assert_eq!(
            conversion_cells(1, key, &c).len(),
            CONVERSIONS.columns.len()
        );
        let p = PlatformState::new();
        assert_eq!(platform_cells(1, "meta", &p).len(), PLATFORMS.columns.len());
        assert_eq!(click_id_cells(&(7, 1)).len(), CLICK_IDS.columns.len());
        assert_eq!(HISTORY.columns.len(), 14);
        assert_eq!(ROLLUPS.columns.len(), 11);
        let key: Vec<&str> = ROLLUPS.columns[..ROLLUP_KEY_COLUMNS]
            .iter()
            .map(|c| c.name())
            .collect();
        assert_eq!(key.join(", "), ROLLUPS.key);
    }

    #[test]
    fn cells_are_json_values_in_their_columns_order() {
        let cells = [int(3), Cell::Int(None), text("a\"b"), Cell::Text(None)];
        assert_eq!(
            serde_json::to_string(&cells).unwrap_or_default(),
            r#"[3,null,"a\"b",null]"#
        );
    }
}
