//! Colours that read on a 16-colour terminal, and none at all with
//! `NO_COLOR`: every distinction a colour makes is also made by a word or a
//! modifier (bold, reversed), so nothing is lost without it.

use ratatui::style::{Color, Modifier, Style};

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThemeConfig {
    /// "auto" (colour unless NO_COLOR is set) or "never".
    pub color: String,
    pub accent: String,
    pub ok: String,
    pub warn: String,
    pub bad: String,
    pub muted: String,
}

impl Default for ThemeConfig {
    fn default() -> Self {
        ThemeConfig {
            color: "auto".into(),
            accent: "cyan".into(),
            ok: "green".into(),
            warn: "yellow".into(),
            bad: "red".into(),
            muted: "dark_gray".into(),
        }
    }
}

/// What a piece of text means; the theme decides how it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Plain,
    Title,
    Header,
    Accent,
    Ok,
    Warn,
    Bad,
    Muted,
    Selected,
    Key,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
    accent: Color,
    ok: Color,
    warn: Color,
    bad: Color,
    muted: Color,
}

/// The 16 ANSI colours, by name: nothing else, so every terminal shows them.
fn ansi(name: &str) -> Result<Color, String> {
    Ok(match name {
        "black" => Color::Black,
        "red" => Color::Red,
        "green" => Color::Green,
        "yellow" => Color::Yellow,
        "blue" => Color::Blue,
        "magenta" => Color::Magenta,
        "cyan" => Color::Cyan,
        "gray" => Color::Gray,
        "dark_gray" => Color::DarkGray,
        "light_red" => Color::LightRed,
        "light_green" => Color::LightGreen,
        "light_yellow" => Color::LightYellow,
        "light_blue" => Color::LightBlue,
        "light_magenta" => Color::LightMagenta,
        "light_cyan" => Color::LightCyan,
        "white" => Color::White,
        other => {
            return Err(format!(
                "colour {other:?}: use one of the 16 ANSI names (black, red, green, yellow, blue, \
                 magenta, cyan, gray, dark_gray, light_red, light_green, light_yellow, light_blue, \
                 light_magenta, light_cyan, white)"
            ));
        }
    })
}

impl Default for Theme {
    fn default() -> Self {
        Theme {
            color: true,
            accent: Color::Cyan,
            ok: Color::Green,
            warn: Color::Yellow,
            bad: Color::Red,
            muted: Color::DarkGray,
        }
    }
}

impl Theme {
    pub fn from_config(c: &ThemeConfig, no_color: bool) -> Result<Theme, String> {
        let color = match c.color.as_str() {
            "auto" => !no_color,
            "never" => false,
            other => return Err(format!("color = {other:?}: use \"auto\" or \"never\"")),
        };
        Ok(Theme {
            color,
            accent: ansi(&c.accent).map_err(|e| format!("accent: {e}"))?,
            ok: ansi(&c.ok).map_err(|e| format!("ok: {e}"))?,
            warn: ansi(&c.warn).map_err(|e| format!("warn: {e}"))?,
            bad: ansi(&c.bad).map_err(|e| format!("bad: {e}"))?,
            muted: ansi(&c.muted).map_err(|e| format!("muted: {e}"))?,
        })
    }

    pub fn monochrome() -> Theme {
        Theme {
            color: false,
            ..Theme::default()
        }
    }

    pub fn style(&self, role: Role) -> Style {
        let s = Style::default();
        if !self.color {
            return match role {
                Role::Title | Role::Header | Role::Bad | Role::Key => {
                    s.add_modifier(Modifier::BOLD)
                }
                Role::Selected => s.add_modifier(Modifier::REVERSED),
                _ => s,
            };
        }
        match role {
            Role::Plain => s,
            Role::Title => s.fg(self.accent).add_modifier(Modifier::BOLD),
            Role::Header => s.add_modifier(Modifier::BOLD),
            Role::Accent => s.fg(self.accent),
            Role::Ok => s.fg(self.ok),
            Role::Warn => s.fg(self.warn),
            Role::Bad => s.fg(self.bad).add_modifier(Modifier::BOLD),
            Role::Muted => s.fg(self.muted),
            Role::Selected => s.add_modifier(Modifier::REVERSED),
            Role::Key => s.fg(self.accent).add_modifier(Modifier::BOLD),
        }
    }
}
