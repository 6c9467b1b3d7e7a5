//! [`ListTable`], the one table the views draw their rows with: an optional
//! block around it, a header, fixed column widths with the last column
//! taking the rest, the selected row highlighted (and kept in sight when
//! the table scrolls), and a muted "nothing here" message instead of the
//! table when there is no row.

use crate::console::app::App;
use crate::console::theme::Role;
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

pub(super) struct ListTable<'a> {
    app: &'a App,
    header: Row<'a>,
    widths: Vec<Constraint>,
    block: Option<Block<'a>>,
    empty: Option<&'a str>,
    selected: Option<usize>,
    scroll: bool,
}

impl<'a> ListTable<'a> {
    /// A table with these column titles; `fixed` are the widths of all
    /// columns but the last, which fills the rest.
    pub(super) fn new(app: &'a App, columns: &[&'a str], fixed: &[u16]) -> Self {
        debug_assert_eq!(
            columns.len(),
            fixed.len() + 1,
            "one width a column but the last"
        );
        ListTable {
            app,
            header: Row::new(columns.iter().map(|c| Cell::from(*c)))
                .style(app.theme.style(Role::Header)),
            widths: fixed
                .iter()
                .map(|w| Constraint::Length(*w))
                .chain([Constraint::Fill(1)])
                .collect(),
            block: None,
            empty: None,
            selected: None,
            scroll: false,
        }
    }

    /// Draw `block` around the table (and around the empty message).
    pub(super) fn block(mut self, block: Block<'a>) -> Self {
        self.block = Some(block);
        self
    }

    /// Say `message` instead of drawing the table when there is no row;
    /// without one an empty table draws its header alone.
    pub(super) fn empty(mut self, message: &'a str) -> Self {
        self.empty = Some(message);
        self
    }

    /// Highlight row `index` and scroll so that it stays in sight.
    pub(super) fn cursor(mut self, index: usize) -> Self {
        self.selected = Some(index);
        self.scroll = true;
        self
    }

    /// Highlight row `index` without scrolling: the table starts at its
    /// first row whatever is highlighted (for short lists: the known
    /// switches, a cluster's pods).
    pub(super) fn highlight(mut self, index: usize) -> Self {
        self.selected = Some(index);
        self.scroll = false;
        self
    }

    /// Draw `items` in `area`, one row each as `row` makes it.
    pub(super) fn render<T>(
        self,
        frame: &mut Frame,
        area: Rect,
        items: &[T],
        row: impl Fn(&T) -> Row<'a>,
    ) {
        let area = match self.block {
            Some(b) => {
                let inner = b.inner(area);
                frame.render_widget(b, area);
                inner
            }
            None => area,
        };
        let theme = &self.app.theme;
        if items.is_empty()
            && let Some(message) = self.empty
        {
            frame.render_widget(
                Paragraph::new(Span::styled(message, theme.style(Role::Muted))),
                area,
            );
            return;
        }
        // Rows that fit under the header.
        let height = usize::from(area.height.saturating_sub(1));
        let (from, to) = match self.selected {
            Some(selected) if self.scroll => window(selected, items.len(), height),
            _ => (0, items.len().min(height)),
        };
        let rows: Vec<Row> = items[from..to]
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let r = row(item);
                if self.selected == Some(from + i) {
                    r.style(theme.style(Role::Selected))
                } else {
                    r
                }
            })
            .collect();
        frame.render_widget(Table::new(rows, self.widths).header(self.header), area);
    }
}

/// The rows to draw, `from..to`, so that `selected` stays visible in
/// `height` rows.
fn window(selected: usize, len: usize, height: usize) -> (usize, usize) {
    let height = height.max(1);
    let offset = if selected >= height {
        selected + 1 - height
    } else {
        0
    };
    (offset, (offset + height).min(len))
}
