//! The `exec` part of policy: a command line run on a host, split the way a POSIX shell would
//! split it, so that rules judge every program it runs.
//!
//! Deliberately narrower than a shell: simple commands joined by `;`, `&&`, `||`, `|`, `&` or
//! newlines, with quoting, escapes and redirections (a command substitution in a redirection's
//! file, `> /tmp/$(id -u)`, becomes a part of its own). Anything else a shell would do with the
//! line — control structures, subshells, here-documents, comments, environment assignments in
//! front of a command, a program name or argument that only expansion would tell (variables,
//! substitutions, globs, braces) — makes the line `unknown`, which no `allow` or `review` rule
//! matches. A full shell grammar crate was weighed and set aside (docs/decisions/gate.md): the
//! judgement must fail closed on what it does not model, not model everything.

use crate::config::policy::{ExecSpec, Glob};
use crate::model::{Class, Facts};

/// Longest command line classified; longer ones are `unknown`.
pub const MAX_LINE: usize = 64 * 1024;
/// Deepest nesting of command substitutions.
const MAX_DEPTH: usize = 8;
/// Most parts (simple commands) in one line.
const MAX_PARTS: usize = 256;

/// Words that start a shell control structure or group: a part beginning with one of them is
/// not a simple command.
const RESERVED: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for",
    "in", "function", "select", "time", "!", "{", "}", "[[", "]]", "coproc",
];

/// Programs that run another program named in their arguments (`env rm -rf /`, `xargs rm`,
/// `sudo rm`): the program they run is only known by modelling each one's options, so such a
/// part with any argument that is not an option is `unknown`. Without this an `allow` rule
/// listing `env` would run anything, and a `deny` rule listing `rm` would miss `env rm`.
/// Interpreters (`sh -c`, `python -c`) are programs like any other: a rule that lists them
/// allows what they run.
pub const WRAPPERS: &[&str] = &[
    "env",
    "nice",
    "nohup",
    "timeout",
    "stdbuf",
    "setsid",
    "ionice",
    "xargs",
    "sudo",
    "doas",
    "su",
    "runuser",
    "command",
    "exec",
    "builtin",
    "eval",
    "source",
    ".",
    "chroot",
    "chrt",
    "taskset",
    "unshare",
    "nsenter",
    "flock",
    "watch",
    "busybox",
    "strace",
    "ltrace",
    "time",
    "parallel",
    "script",
    "setpriv",
    "prlimit",
    "cgexec",
    "systemd-run",
    "ssh",
];

/// Programs that run a command named in an option (`find -exec rm {} ;`, `rsync -e 'sh -c
/// …'`, `tar --to-command=…`, `scp -S prog`): what runs is the option's value, so a part using
/// one is `unknown` like a wrapper's. Without this an `allow` rule listing `find` or `rsync`
/// would run anything.
struct OptionRunner {
    program: &'static str,
    /// Options, long or short, that take a command (matched with or without `=value`; a long
    /// one also abbreviated, as getopt_long and git accept `--to-comm` for `--to-command`).
    options: &'static [&'static str],
    /// Arguments that make the program run a command (`git submodule foreach`).
    subcommands: &'static [&'static str],
    /// Short option letters that take a command, also inside a cluster (`-avze ssh`).
    letters: &'static str,
    /// The program reads its first argument as an option cluster even without a dash
    /// (`tar xIf zstd a.tar`).
    bundled_first: bool,
    /// With this argument the program runs in a mode where those options mean something else
    /// (`rsync --server`, whose `-e.iLsf…` carries protocol flags from the client).
    unless: Option<&'static str>,
    /// Options that run a command (or read a file that names one) in every mode, `unless`
    /// or not: `rsync --server --daemon` reads `rsyncd.conf`, whose `pre-xfer exec` runs.
    always: &'static [&'static str],
    /// Short letters of `always`, found in a cluster before the first of `letters` (whose
    /// value is the rest of the cluster: `-e.iLsf…`).
    always_letters: &'static str,
}

const OPTION_RUNNERS: &[OptionRunner] = &[
    OptionRunner {
        program: "find",
        options: &["-exec", "-execdir", "-ok", "-okdir"],
        ..OptionRunner::PLAIN
    },
    OptionRunner {
        program: "rsync",
        options: &["--rsh", "--rsync-path"],
        letters: "e",
        unless: Some("--server"),
        always: &["--daemon", "--config", "--dparam", "--remote-option"],
        always_letters: "M",
        ..OptionRunner::PLAIN
    },
    OptionRunner {
        program: "tar",
        options: &[
            "--to-command",
            "--checkpoint-action",
            "--use-compress-program",
            "--rsh-command",
            "--info-script",
            "--new-volume-script",
        ],
        letters: "IF",
        bundled_first: true,
        ..OptionRunner::PLAIN
    },
    OptionRunner {
        program: "scp",
        letters: "SoFJ",
        ..OptionRunner::PLAIN
    },
    OptionRunner {
        program: "sftp",
        letters: "SoFJDb",
        ..OptionRunner::PLAIN
    },
    OptionRunner {
        program: "git",
        options: &[
            "-c",
            "--config-env",
            "--upload-pack",
            "--receive-pack",
            "--exec",
            "--exec-path",
            "--template",
            "--extcmd",
            "-u",
            "-x",
        ],
        subcommands: &["foreach", "run", "filter-branch", "filter-repo"],
        ..OptionRunner::PLAIN
    },
    OptionRunner {
        program: "zip",
        options: &["-TT", "--unzip-command"],
        ..OptionRunner::PLAIN
    },
    OptionRunner {
        program: "tcpdump",
        options: &["--postrotate-command"],
        letters: "z",
        ..OptionRunner::PLAIN
    },
];

impl OptionRunner {
    /// No option, letter, mode or subcommand: what an entry does not name.
    const PLAIN: OptionRunner = OptionRunner {
        program: "",
        options: &[],
        subcommands: &[],
        letters: "",
        bundled_first: false,
        unless: None,
        always: &[],
        always_letters: "",
    };

    /// The option of `args` that names a command to run, if any.
    fn used<'a>(&self, args: &'a [impl AsRef<str>]) -> Option<&'a str> {
        let always = args.iter().find_map(|arg| {
            let arg = arg.as_ref();
            (named(self.always, arg) || self.always_clustered(arg)).then_some(arg)
        });
        if always.is_some() {
            return always;
        }
        if self
            .unless
            .is_some_and(|u| args.iter().any(|a| a.as_ref() == u))
        {
            return None;
        }
        args.iter().enumerate().find_map(|(i, arg)| {
            let arg = arg.as_ref();
            let sub = self.subcommands.contains(&arg);
            (named(self.options, arg) || sub || self.clustered(arg, i == 0)).then_some(arg)
        })
    }

    /// Whether `arg` is a short option cluster holding one of `always_letters` before the
    /// first letter that takes the rest of the cluster as its value.
    fn always_clustered(&self, arg: &str) -> bool {
        if self.always_letters.is_empty() || arg.starts_with("--") {
            return false;
        }
        let Some(cluster) = arg.strip_prefix('-') else {
            return false;
        };
        cluster
            .chars()
            .take_while(|c| !self.letters.contains(*c))
            .any(|c| self.always_letters.contains(c))
    }

    /// Whether `arg` is a short option cluster holding one of the command-taking letters.
    fn clustered(&self, arg: &str, first: bool) -> bool {
        if self.letters.is_empty() || arg.starts_with("--") {
            return false;
        }
        let cluster = match arg.strip_prefix('-') {
            Some(c) => c,
            None if first && self.bundled_first => arg,
            None => return false,
        };
        cluster.chars().any(|c| self.letters.contains(c))
    }
}

/// Whether `arg` is one of `options`, with or without `=value`; a long one also abbreviated.
fn named(options: &[&str], arg: &str) -> bool {
    let name = arg.split('=').next().unwrap_or(arg);
    options
        .iter()
        .any(|o| name == *o || (name.len() > 3 && o.starts_with("--") && o.starts_with(name)))
}

/// Why a simple command whose program runs another program cannot be judged (`None`: it can).
fn wrapped(words: &[impl AsRef<str>]) -> Option<Unsplittable> {
    let program = base_name(words.first()?.as_ref());
    if let Some(runner) = OPTION_RUNNERS.iter().find(|r| r.program == program) {
        return runner.used(&words[1..]).map(|option| {
            format!("`{program} {option}` runs the command in its option, which is not judged")
        });
    }
    if !WRAPPERS.contains(&program) {
        return None;
    }
    words[1..]
        .iter()
        .any(|w| !w.as_ref().starts_with('-'))
        .then(|| {
            format!("`{program}` runs the program in its arguments; name that program directly")
        })
}

/// One simple command of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The words after quote removal; the first is the program.
    pub words: Vec<String>,
    /// Files output is redirected to (`>`, `>>`, `&>`, `<>`), as written; `/dev/null` is left
    /// out (it writes nothing).
    pub writes: Vec<String>,
}

/// A command line split into its simple commands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    pub parts: Vec<Part>,
    /// Operators seen between parts (`;`, `&&`, `|`, …) and substitutions, for the notes.
    pub operators: Vec<&'static str>,
}

/// Why a line could not be split.
pub type Unsplittable = String;

/// Splits a command line, or says why it cannot be judged.
pub fn split(line: &str) -> Result<Split, Unsplittable> {
    if line.len() > MAX_LINE {
        return Err(format!("command line longer than {MAX_LINE} bytes"));
    }
    let mut out = Split::default();
    Lexer {
        chars: line.chars().collect(),
        pos: 0,
        depth: 0,
    }
    .run(&mut out)?;
    if out.parts.is_empty() {
        return Err("empty command".into());
    }
    Ok(out)
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

/// A word being built: its text, and whether expansion decides any of it.
#[derive(Default)]
struct Word {
    text: String,
    /// Started (even if empty, e.g. `''`).
    started: bool,
    /// Contains `$var`, `${…}`, `$((…))` or a substitution: its value is only known at run time.
    dynamic: bool,
    /// Contains unquoted glob characters.
    glob: bool,
    /// The word as the shell's expansions see it: unquoted characters as they are, quoted or
    /// escaped ones (and expansions) as NUL, so that `'{a,b}'` is not brace expansion.
    shape: String,
}

impl Word {
    /// A character as it is, which expansion may act on.
    fn plain(&mut self, c: char) {
        self.started = true;
        self.text.push(c);
        self.shape.push(c);
    }

    /// A quoted or escaped character: literal.
    fn quoted(&mut self, c: char) {
        self.started = true;
        self.text.push(c);
        self.shape.push('\0');
    }

    /// Whether brace expansion applies (`{a,b}`, `{1..3}`): an unquoted `{`, then an unquoted
    /// `,` or `..`, then an unquoted `}`. Wider than bash's rule, never narrower.
    fn braces(&self) -> bool {
        let Some(open) = self.shape.find('{') else {
            return false;
        };
        let rest = &self.shape[open + 1..];
        let sep = match (rest.find(','), rest.find("..")) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return false,
        };
        rest[sep..].contains('}')
    }

    /// Whether the shell's expansions decide the word's value, or how many words it becomes:
    /// a parameter, substitution or arithmetic, a glob, brace expansion, a tilde (`~root/…`,
    /// also after `=` or `:` as in assignments).
    fn expands(&self) -> bool {
        self.dynamic
            || self.glob
            || self.braces()
            || self.shape.starts_with('~')
            || self.shape.contains("=~")
            || self.shape.contains(":~")
    }
}

/// A simple command being built.
#[derive(Default)]
struct Building {
    words: Vec<Word>,
    writes: Vec<String>,
    /// The next word is a redirection target, not an argument.
    redirect_target: bool,
    /// That redirection writes its file.
    redirect_writes: bool,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn run(&mut self, out: &mut Split) -> Result<(), Unsplittable> {
        let mut cmd = Building::default();
        let mut word = Word::default();
        while let Some(c) = self.peek(0) {
            match c {
                ' ' | '\t' => {
                    self.pos += 1;
                    self.end_word(&mut cmd, &mut word)?;
                }
                '\n' | ';' => {
                    if c == ';' && self.peek(1) == Some(';') {
                        return Err("`;;` belongs to a case statement".into());
                    }
                    self.pos += 1;
                    self.end_word(&mut cmd, &mut word)?;
                    self.end_part(out, &mut cmd, if c == ';' { ";" } else { "newline" })?;
                }
                '&' => {
                    self.pos += 1;
                    if self.peek(0) == Some('&') {
                        self.pos += 1;
                        self.end_word(&mut cmd, &mut word)?;
                        self.end_part(out, &mut cmd, "&&")?;
                    } else if self.peek(0) == Some('>') {
                        // `&>file`: both streams to a file.
                        self.pos += 1;
                        if self.peek(0) == Some('>') {
                            self.pos += 1;
                        }
                        self.end_word(&mut cmd, &mut word)?;
                        cmd.redirect_writes = true;
                        cmd.redirect_target = true;
                    } else {
                        self.end_word(&mut cmd, &mut word)?;
                        self.end_part(out, &mut cmd, "&")?;
                    }
                }
                '|' => {
                    self.pos += 1;
                    let op = match self.peek(0) {
                        Some('|') => {
                            self.pos += 1;
                            "||"
                        }
                        Some('&') => {
                            self.pos += 1;
                            "|"
                        }
                        _ => "|",
                    };
                    self.end_word(&mut cmd, &mut word)?;
                    self.end_part(out, &mut cmd, op)?;
                }
                '>' | '<' => self.redirection(&mut cmd, &mut word)?,
                '(' | ')' => return Err("subshells and groups are not judged".into()),
                '#' if !word.started => return Err("comments are not judged".into()),
                '\'' => {
                    self.pos += 1;
                    word.started = true;
                    loop {
                        match self.peek(0) {
                            None => return Err("unterminated single quote".into()),
                            Some('\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(ch) => {
                                word.quoted(ch);
                                self.pos += 1;
                            }
                        }
                    }
                }
                '"' => {
                    self.pos += 1;
                    word.started = true;
                    self.double_quoted(out, &mut word)?;
                }
                '\\' => {
                    self.pos += 1;
                    match self.peek(0) {
                        None => return Err("a trailing backslash".into()),
                        // Line continuation.
                        Some('\n') => self.pos += 1,
                        Some(ch) => {
                            word.quoted(ch);
                            self.pos += 1;
                        }
                    }
                }
                '$' => {
                    word.started = true;
                    self.dollar(out, &mut word)?;
                }
                '`' => {
                    word.started = true;
                    self.backquote(out, &mut word)?;
                }
                '*' | '?' | '[' => {
                    word.glob = true;
                    word.plain(c);
                    self.pos += 1;
                }
                // `{` may start brace expansion (`{rm,-f,x}` runs rm): `Word::braces`.
                ch => {
                    word.plain(ch);
                    self.pos += 1;
                }
            }
        }
        self.end_word(&mut cmd, &mut word)?;
        if !cmd.words.is_empty() || cmd.redirect_target {
            self.end_part(out, &mut cmd, "")?;
        } else if out
            .operators
            .last()
            .is_some_and(|op| matches!(*op, "&&" | "||" | "|"))
        {
            return Err("a line ending in an operator".into());
        }
        Ok(())
    }

    fn redirection(&mut self, cmd: &mut Building, word: &mut Word) -> Result<(), Unsplittable> {
        let c = self.peek(0).unwrap_or('>');
        // `2>file`: the digits before the operator name a descriptor, not a word.
        if word.started && !word.text.is_empty() && word.text.bytes().all(|b| b.is_ascii_digit()) {
            *word = Word::default();
        } else {
            self.end_word(cmd, word)?;
        }
        self.pos += 1;
        if c == '<' {
            match self.peek(0) {
                Some('<') => return Err("here-documents are not judged".into()),
                Some('(') => return Err("process substitution is not judged".into()),
                Some('&') | Some('>') => {
                    self.pos += 1;
                    if c == '<' && self.chars.get(self.pos - 1) == Some(&'>') {
                        cmd.redirect_writes = true;
                    }
                }
                _ => {}
            }
        } else {
            match self.peek(0) {
                Some('(') => return Err("process substitution is not judged".into()),
                Some('>') | Some('|') => self.pos += 1,
                Some('&') => {
                    // `>&2`: duplicate a descriptor, no file.
                    self.pos += 1;
                    let mut digits = false;
                    while self.peek(0).is_some_and(|d| d.is_ascii_digit() || d == '-') {
                        self.pos += 1;
                        digits = true;
                    }
                    if digits {
                        return Ok(());
                    }
                }
                _ => {}
            }
            cmd.redirect_writes = true;
        }
        cmd.redirect_target = true;
        Ok(())
    }

    fn double_quoted(&mut self, out: &mut Split, word: &mut Word) -> Result<(), Unsplittable> {
        loop {
            match self.peek(0) {
                None => return Err("unterminated double quote".into()),
                Some('"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some('\\') => {
                    self.pos += 1;
                    match self.peek(0) {
                        Some(ch @ ('$' | '`' | '"' | '\\')) => {
                            word.quoted(ch);
                            self.pos += 1;
                        }
                        Some('\n') => self.pos += 1,
                        Some(ch) => {
                            word.quoted('\\');
                            word.quoted(ch);
                            self.pos += 1;
                        }
                        None => return Err("unterminated double quote".into()),
                    }
                }
                Some('$') => self.dollar(out, word)?,
                Some('`') => self.backquote(out, word)?,
                Some(ch) => {
                    word.quoted(ch);
                    self.pos += 1;
                }
            }
        }
    }

    /// `$name`, `${…}`, `$((…))`, `$(…)`; the lexer is on the `$`.
    fn dollar(&mut self, out: &mut Split, word: &mut Word) -> Result<(), Unsplittable> {
        self.pos += 1;
        match self.peek(0) {
            Some('(') if self.peek(1) == Some('(') => {
                // Arithmetic: no command runs, but the value is dynamic.
                let inner = self.balanced('(', ')')?;
                if inner.contains("$(") || inner.contains('`') {
                    return Err("a command substitution inside arithmetic is not judged".into());
                }
                word.dynamic = true;
            }
            Some('(') => {
                let inner = self.balanced('(', ')')?;
                self.substitute(out, &inner, "$(…)")?;
                word.dynamic = true;
            }
            Some('{') => {
                let inner = self.balanced('{', '}')?;
                if inner.contains("$(") || inner.contains('`') {
                    return Err("a command substitution inside ${…} is not judged".into());
                }
                word.dynamic = true;
            }
            Some(ch) if ch.is_ascii_alphanumeric() || "_@*#?$!-".contains(ch) => {
                word.dynamic = true;
                self.pos += 1;
                if ch.is_ascii_alphabetic() || ch == '_' {
                    while self
                        .peek(0)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        self.pos += 1;
                    }
                }
            }
            Some('\'') => return Err("$'…' quoting is not judged".into()),
            // A lone `$` is literal.
            _ => word.quoted('$'),
        }
        Ok(())
    }

    fn backquote(&mut self, out: &mut Split, word: &mut Word) -> Result<(), Unsplittable> {
        self.pos += 1;
        let mut inner = String::new();
        loop {
            match self.peek(0) {
                None => return Err("unterminated backquote".into()),
                Some('`') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => {
                    self.pos += 1;
                    if let Some(ch) = self.peek(0) {
                        if !matches!(ch, '$' | '`' | '\\') {
                            inner.push('\\');
                        }
                        inner.push(ch);
                        self.pos += 1;
                    }
                }
                Some(ch) => {
                    inner.push(ch);
                    self.pos += 1;
                }
            }
        }
        self.substitute(out, &inner, "`…`")?;
        word.dynamic = true;
        Ok(())
    }

    /// The text between an opening bracket (at the lexer's position, possibly doubled) and its
    /// match, quotes respected; the lexer moves past the closing bracket(s).
    fn balanced(&mut self, open: char, close: char) -> Result<String, Unsplittable> {
        let start = self.pos;
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            match (quote, c) {
                (Some('\''), '\'') | (Some('"'), '"') => quote = None,
                (Some('"'), '\\') | (None, '\\') => self.pos += 1,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, c) if c == open => depth += 1,
                (None, c) if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        let inner: String = self.chars[start + 1..self.pos - 1].iter().collect();
                        return Ok(inner);
                    }
                }
                _ => {}
            }
        }
        Err(format!("unbalanced `{open}`"))
    }

    fn substitute(
        &mut self,
        out: &mut Split,
        inner: &str,
        op: &'static str,
    ) -> Result<(), Unsplittable> {
        if self.depth >= MAX_DEPTH {
            return Err("command substitutions nested too deep".into());
        }
        let mut nested = Split::default();
        Lexer {
            chars: inner.chars().collect(),
            pos: 0,
            depth: self.depth + 1,
        }
        .run(&mut nested)?;
        out.operators.push(op);
        out.operators.extend(nested.operators);
        for p in nested.parts {
            push_part(out, p)?;
        }
        Ok(())
    }

    fn end_word(&mut self, cmd: &mut Building, word: &mut Word) -> Result<(), Unsplittable> {
        if !word.started {
            return Ok(());
        }
        let w = std::mem::take(word);
        if cmd.redirect_target {
            // The redirection's file: not an argument, but a file the line writes.
            cmd.redirect_target = false;
            // `> /dev/null${x:-/../etc/passwd}` is not /dev/null.
            if std::mem::take(&mut cmd.redirect_writes) && (w.text != "/dev/null" || w.expands()) {
                // A target only known at run time (`> $HOME/x`; its text holds only the
                // literal parts) is marked with a leading `$`: no rule covers it (`writable`).
                let expands = w.expands();
                let mut text = w.text;
                if expands {
                    text.insert(0, '$');
                }
                cmd.writes.push(text);
            }
            return Ok(());
        }
        cmd.words.push(w);
        Ok(())
    }

    fn end_part(
        &mut self,
        out: &mut Split,
        cmd: &mut Building,
        op: &'static str,
    ) -> Result<(), Unsplittable> {
        let b = std::mem::take(cmd);
        if b.redirect_target {
            return Err("a redirection without a file".into());
        }
        if b.words.is_empty() {
            return match op {
                // Blank lines separate nothing.
                "" | "newline" => Ok(()),
                _ => Err(format!("`{op}` without a command before it")),
            };
        }
        let first = &b.words[0];
        if first.expands() {
            return Err(
                "the program name is only known after expansion (a variable, substitution, glob or braces)"
                    .into(),
            );
        }
        if RESERVED.contains(&first.text.as_str()) {
            return Err(format!(
                "`{}` starts a shell control structure, which is not judged",
                first.text
            ));
        }
        if is_assignment(&first.text) {
            return Err(
                "a variable assignment before a command changes how it runs (PATH, LD_PRELOAD, …)"
                    .into(),
            );
        }
        if let Some(why) = wrapped(&b.words.iter().map(|w| &w.text).collect::<Vec<_>>()) {
            return Err(why);
        }
        // `cat /srv/x${IFS}${x:-/etc/shadow}`, `find -${x:-exec}`, `/srv/{.,}./etc`: the words
        // the rules would read are not the ones that run.
        if b.words[1..].iter().any(Word::expands) {
            return Err(
                "an argument is only known after expansion (a variable, substitution, glob or \
                 braces), so the rules would not see what runs"
                    .into(),
            );
        }
        if !op.is_empty() && op != "newline" {
            out.operators.push(op);
        } else if op == "newline" {
            out.operators.push(";");
        }
        push_part(
            out,
            Part {
                words: b.words.into_iter().map(|w| w.text).collect(),
                writes: b.writes,
            },
        )
    }
}

fn push_part(out: &mut Split, part: Part) -> Result<(), Unsplittable> {
    if out.parts.len() >= MAX_PARTS {
        return Err(format!("more than {MAX_PARTS} commands in one line"));
    }
    out.parts.push(part);
    Ok(())
}

fn is_assignment(word: &str) -> bool {
    let Some((name, _)) = word.split_once('=') else {
        return false;
    };
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The base name of a program path (`/usr/bin/rm` → `rm`).
pub fn base_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// Classifies a command line: every part is `admin` (a program run on a host); a line that
/// cannot be split is `unknown`. `programs` lists each part's program, `objects` each part's
/// words joined by single spaces.
pub fn classify(line: &str) -> Facts {
    match split(line) {
        Err(why) => Facts::unknown("exec", format!("command line not judged: {why}")),
        Ok(s) => facts_of(&s, "exec"),
    }
}

/// Facts of an argv run without a shell (a Kubernetes exec).
pub fn classify_argv(argv: &[impl AsRef<str>], kind: &'static str) -> Facts {
    if argv.is_empty() || argv[0].as_ref().is_empty() {
        return Facts::unknown(kind, "no command".into());
    }
    if let Some(why) = wrapped(argv) {
        return Facts::unknown(kind, format!("command not judged: {why}"));
    }
    let split = Split {
        parts: vec![Part {
            words: argv.iter().map(|a| a.as_ref().to_owned()).collect(),
            writes: Vec::new(),
        }],
        operators: Vec::new(),
    };
    facts_of(&split, kind)
}

fn facts_of(s: &Split, kind: &'static str) -> Facts {
    let mut notes = Vec::new();
    if s.parts.len() > 1 {
        let mut ops: Vec<&str> = s.operators.clone();
        ops.sort_unstable();
        ops.dedup();
        notes.push(format!(
            "compound command: {} commands joined by {}",
            s.parts.len(),
            ops.join(" ")
        ));
    }
    let files_written: Vec<String> = s.parts.iter().flat_map(|p| p.writes.clone()).collect();
    if !files_written.is_empty() {
        notes.push(format!(
            "output redirected to a file: {}",
            files_written.join(", ")
        ));
    }
    Facts {
        kinds: vec![kind; s.parts.len()],
        statement_classes: vec![Class::Admin; s.parts.len()],
        class: Class::Admin,
        programs: s.parts.iter().map(|p| p.words[0].clone()).collect(),
        objects: s.parts.iter().map(|p| p.words.join(" ")).collect(),
        words: s.parts.iter().map(|p| p.words.clone()).collect(),
        files_written,
        notes,
        ..Facts::default()
    }
}

/// Whether an `allow`/`review` rule lets a line write `file` by redirection: a `writes` glob
/// matches it, and it is known before the line runs (no `$`, no backquote) and does not climb
/// with `..`.
fn writable(spec: &ExecSpec, file: &str) -> bool {
    !file.contains(['$', '`']) && !climbs(file) && spec.writes.iter().any(|g| g.matches(file))
}

/// Directories whose programs an `allow`/`review` rule's bare name also covers (`ls` covers
/// `/usr/bin/ls`): where the system's programs are, which the login cannot write.
const SYSTEM_DIRS: &[&str] = &["/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin"];

/// Whether a `programs` glob covers a part's program. A glob with a `/` matches the program as
/// written. A bare name matches the program's base name: for `deny`, wherever it is; for
/// `allow`/`review`, only a program named bare (found in `PATH`) or in [`SYSTEM_DIRS`] —
/// `/srv/incoming/ls` is whatever was uploaded there, not `ls`.
fn program_matches(glob: &Glob, program: &str, permissive: bool) -> bool {
    if glob.0.contains('/') {
        return glob.matches(program);
    }
    let base = base_name(program);
    let trusted = match program.rsplit_once('/') {
        None => true,
        Some((dir, _)) => SYSTEM_DIRS.contains(&dir),
    };
    (trusted || !permissive) && glob.matches(base)
}

/// Whether a command line has a `..` path segment in any word.
fn climbs(line: &str) -> bool {
    line.split([' ', '/', '=']).any(|seg| seg == "..")
}

/// Why an `exec` block does not match a classified command line (`None`: it matches).
/// `permissive` is true for `allow` and `review` rules: every part must match, compound lines
/// only with `compound: true`, unknown lines never. For `deny`, any part (or an unknown line)
/// is enough.
pub fn mismatch(spec: &ExecSpec, facts: &Facts, permissive: bool) -> Option<&'static str> {
    let unknown = facts.class == crate::model::Class::Unknown;
    let part_matches = |i: usize| {
        let program = facts.programs.get(i).map(String::as_str).unwrap_or("");
        let words = facts.words.get(i).map(Vec::as_slice).unwrap_or(&[]);
        let by_program = spec.programs.is_empty()
            || spec
                .programs
                .iter()
                .any(|g: &Glob| program_matches(g, program, permissive));
        // `*` crosses `/`: `scp -f /srv/*` would match `scp -f /srv/../etc/shadow`, so a line
        // climbing with `..` is never allowed by a `commands` glob (a deny glob still matches).
        // Allowing, a glob's words pair up with the line's (`scp -f /srv/*` is not `scp -f
        // /srv/x /etc/passwd`); denying, it matches the words joined by spaces, so a `*` may
        // cover several (`git push*` denies `git push origin main`).
        let by_command = spec.commands.is_empty()
            || if permissive {
                !words.iter().any(|w| climbs(w))
                    && spec.commands.iter().any(|g| g.matches_words(words))
            } else {
                let line = words.join(" ");
                spec.commands.iter().any(|g| g.matches(&line))
            };
        by_program && by_command
    };
    let parts = facts.programs.len();
    if permissive {
        if unknown {
            return Some("exec (the command line could not be judged)");
        }
        if parts > 1 && !spec.compound {
            return Some("exec (compound command; the rule has no `compound: true`)");
        }
        if !(0..parts).all(part_matches) {
            return Some("exec (a program or command is not in the rule's lists)");
        }
        // A redirection makes any program a file writer (`cat key > ~/.ssh/authorized_keys`):
        // covered only where the rule names the file.
        if !facts.files_written.iter().all(|f| writable(spec, f)) {
            return Some("exec (output redirected to a file the rule's `writes` does not list)");
        }
        None
    } else {
        let writes = spec.writes.is_empty()
            || facts
                .files_written
                .iter()
                .any(|f| spec.writes.iter().any(|g| g.matches(f)));
        if writes && (unknown || (0..parts).any(part_matches)) {
            return None;
        }
        Some("exec (no program or command in the rule's lists)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<Vec<String>> {
        split(line)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .parts
            .into_iter()
            .map(|p| p.words)
            .collect()
    }

    #[test]
    fn splits_words_with_quotes_and_escapes() {
        assert_eq!(words("ls -la /tmp"), [["ls", "-la", "/tmp"]]);
        assert_eq!(
            words(r#"grep "a b" 'c d' e\ f"#),
            [["grep", "a b", "c d", "e f"]]
        );
        assert_eq!(words(r#"echo "q\"uote" ''"#), [["echo", "q\"uote", ""]]);
        assert_eq!(words("echo a\\\nb"), [["echo", "ab"]]);
        assert_eq!(words("  true  "), [["true"]]);
    }

    #[test]
    fn splits_compound_lines_into_parts() {
        assert_eq!(
            words("cd /srv && git pull; make | tee log || echo failed &"),
            vec![
                vec!["cd", "/srv"],
                vec!["git", "pull"],
                vec!["make"],
                vec!["tee", "log"],
                vec!["echo", "failed"],
            ]
        );
        assert_eq!(words("a\nb"), [["a"], ["b"]]);
    }

    #[test]
    fn substitutions_in_redirections_become_parts() {
        let s = split("ls > /tmp/$(rm -rf /) 2> /tmp/`id -u` >> \"/tmp/$(whoami)\"").unwrap();
        let progs: Vec<&str> = s.parts.iter().map(|p| p.words[0].as_str()).collect();
        assert_eq!(progs, ["rm", "id", "whoami", "ls"]);
        assert!(s.operators.contains(&"$(…)") && s.operators.contains(&"`…`"));
        // Nested.
        let s = split("ls > $(cat > $(ls))").unwrap();
        assert_eq!(s.parts.len(), 3);
    }

    /// What the rules read must be what runs: a word the shell's expansions decide (its value,
    /// or how many words it becomes) makes the line `unknown`, in the program name or in an
    /// argument. No `allow`/`review` rule covers it; every `deny` rule does.
    #[test]
    fn expansions_in_arguments_are_unknown() {
        for line in [
            "cat /srv/ro/customers.txt${IFS}${x:-/etc/shadow}",
            "find /srv -${x:-exec} sh -c id \\;",
            "scp -f /srv/x${x:-/../../etc/passwd}",
            "scp -f /srv/{.,}./etc/passwd",
            "scp -f /srv/{a..b}",
            "git -${x:-c} core.pager='sh -c id' log",
            "tar -${x:-I} sh -xf a.tar",
            "tee /srv/x${IFS}${x:-~/.ssh/authorized_keys}",
            "cat /srv/$X",
            "cat \"/srv/$X\"",
            "cat /srv/$(echo x)",
            "cat `echo /etc/shadow`",
            "echo $((1+2))",
            "cat /srv/ro/*",
            "cat /srv/ro/?",
            "cat /srv/[a]",
            "echo $(rm -rf /)",
            "ls; cat /srv/*",
            "cat ~root/.ssh/id_rsa",
            "cat ~/.ssh/id_rsa",
            "tar --file=~/x -c /srv",
        ] {
            let f = classify(line);
            assert_eq!(f.class, Class::Unknown, "{line:?}");
            let allow = ExecSpec {
                programs: vec![Glob("*".into())],
                ..ExecSpec::default()
            };
            assert!(mismatch(&allow, &f, true).is_some(), "{line:?}");
            let deny = ExecSpec {
                programs: vec![Glob("rm".into())],
                ..ExecSpec::default()
            };
            assert_eq!(mismatch(&deny, &f, false), None, "deny matches {line:?}");
        }
        assert!(
            split("cat /srv/$X")
                .unwrap_err()
                .contains("only known after expansion")
        );
        // Quoted or escaped, the same characters are literal.
        for (line, args) in [
            (
                "cat '/srv/x${IFS}${x:-/etc/shadow}'",
                "/srv/x${IFS}${x:-/etc/shadow}",
            ),
            ("scp -f '/srv/{.,}./x'", "/srv/{.,}./x"),
            ("scp -f /srv/\\{.,\\}./x", "/srv/{.,}./x"),
            ("scp -f \"/srv/{.,}.\"", "/srv/{.,}."),
            ("find /srv -name '*.csv'", "*.csv"),
            ("find /srv -name \\*.csv", "*.csv"),
            ("echo \"a $ b\"", "a $ b"),
            ("echo {}", "{}"),
            ("echo {a} a,b}", "a,b}"),
        ] {
            let w = words(line);
            assert_eq!(w[0].last().map(String::as_str), Some(args), "{line:?}");
        }
        // A redirection to a file only expansion names is one no rule covers, even one that
        // starts like /dev/null.
        for line in [
            "ls > /dev/null${x:-/../../etc/passwd}",
            "ls > /tmp/{a,../../etc/passwd}",
            "ls > /tmp/*",
        ] {
            let s = split(line).unwrap();
            assert!(s.parts[0].writes[0].starts_with('$'), "{line:?}");
            let tmp = ExecSpec {
                programs: vec![Glob("ls".into())],
                writes: vec![Glob("*".into())],
                ..ExecSpec::default()
            };
            assert!(
                mismatch(&tmp, &facts_of(&s, "exec"), true).is_some(),
                "{line:?}"
            );
        }
    }

    /// An `allow` rule's `commands` glob pairs its words with the line's: a `*` never covers
    /// a space, so extra arguments are not allowed; a `deny` glob reads the joined line.
    #[test]
    fn commands_globs_match_word_by_word() {
        let spec = |g: &str| ExecSpec {
            commands: vec![Glob(g.into())],
            ..ExecSpec::default()
        };
        let scp = spec("scp -f /srv/*");
        assert_eq!(
            mismatch(&scp, &classify("scp -f /srv/report.txt"), true),
            None
        );
        assert_eq!(mismatch(&scp, &classify("scp  -f   /srv/a"), true), None);
        for line in [
            "scp -f /srv/report.txt /etc/passwd",
            "scp -f /srv/x -S /tmp/evil",
            "scp -f",
            "scp -f '/srv/a /etc/passwd' x",
        ] {
            assert!(mismatch(&scp, &classify(line), true).is_some(), "{line:?}");
        }
        // A word with a space in it is still one word.
        assert_eq!(mismatch(&scp, &classify("scp -f '/srv/a b'"), true), None);
        let deny = spec("git push*");
        assert_eq!(
            mismatch(&deny, &classify("git push origin main"), false),
            None
        );
        assert!(mismatch(&deny, &classify("git pull"), false).is_some());
        // A Kubernetes exec's argv is matched the same way.
        let argv = classify_argv(&["cat", "/srv/a", "/etc/shadow"], "exec");
        assert!(mismatch(&spec("cat /srv/*"), &argv, true).is_some());
        let argv = classify_argv(&["cat", "/srv/a"], "exec");
        assert_eq!(mismatch(&spec("cat /srv/*"), &argv, true), None);
    }

    /// A bare program name in an `allow` rule is the system's program, not a file of that
    /// name anywhere (`/srv/incoming/ls` is whatever was uploaded); `deny` rules match it
    /// wherever it is.
    #[test]
    fn allow_rules_match_bare_names_only_in_system_dirs() {
        let spec = |g: &str| ExecSpec {
            programs: vec![Glob(g.into())],
            ..ExecSpec::default()
        };
        let ls = spec("ls");
        for line in [
            "ls",
            "/bin/ls",
            "/usr/bin/ls -la",
            "/usr/local/bin/ls",
            "/sbin/ls",
        ] {
            assert_eq!(mismatch(&ls, &classify(line), true), None, "{line:?}");
        }
        for line in [
            "/srv/incoming/ls",
            "./ls",
            "bin/ls",
            "/usr/bin/../../srv/incoming/ls",
            "//usr/bin/ls",
            "/tmp/ls",
        ] {
            assert!(mismatch(&ls, &classify(line), true).is_some(), "{line:?}");
            assert_eq!(mismatch(&ls, &classify(line), false), None, "deny {line:?}");
        }
        assert!(mismatch(&spec("*"), &classify("/srv/incoming/x"), true).is_some());
        // A glob with a path matches the path as written.
        let srv = spec("/srv/tools/*");
        assert_eq!(mismatch(&srv, &classify("/srv/tools/report"), true), None);
        assert!(mismatch(&srv, &classify("report"), true).is_some());
    }

    #[test]
    fn redirections_are_not_arguments() {
        let s = split("cat /etc/passwd > /tmp/x 2>&1").unwrap();
        assert_eq!(s.parts[0].words, ["cat", "/etc/passwd"]);
        assert_eq!(s.parts[0].writes, ["/tmp/x"]);
        let s = split("sort < in.txt").unwrap();
        assert_eq!(s.parts[0].words, ["sort"]);
        assert!(s.parts[0].writes.is_empty());
        let s = split("ls 2>/dev/null >/dev/null").unwrap();
        assert_eq!(s.parts[0].words, ["ls"]);
        assert!(s.parts[0].writes.is_empty(), "/dev/null writes nothing");
        let s = split("ls >>a 2>b &>c <>d > \"$HOME/e\"").unwrap();
        assert_eq!(s.parts[0].words, ["ls"]);
        assert_eq!(s.parts[0].writes[..4], ["a", "b", "c", "d"]);
        assert!(
            s.parts[0].writes[4].starts_with('$'),
            "known at run time only"
        );
    }

    /// A redirection turns any program into a file writer: an `allow` rule covers it only
    /// for the files its `writes` names, known before the line runs.
    #[test]
    fn allow_rules_cover_redirections_only_to_files_they_name() {
        let spec = |writes: &[&str]| ExecSpec {
            programs: vec![Glob("ls".into()), Glob("cat".into())],
            commands: Vec::new(),
            compound: false,
            writes: writes.iter().map(|w| Glob((*w).into())).collect(),
        };
        let judge = |spec: &ExecSpec, line: &str, permissive: bool| {
            mismatch(spec, &classify(line), permissive)
        };
        let none = spec(&[]);
        assert_eq!(judge(&none, "ls /srv", true), None);
        assert_eq!(judge(&none, "ls /srv 2>/dev/null", true), None);
        for line in [
            "ls > /etc/passwd",
            "cat key >> /root/.ssh/authorized_keys",
            "ls &> /tmp/out",
            "ls 2> /tmp/err",
        ] {
            assert!(judge(&none, line, true).is_some(), "{line}");
        }
        let tmp = spec(&["/tmp/*"]);
        assert_eq!(judge(&tmp, "ls > /tmp/out", true), None);
        for line in [
            "ls > /etc/passwd",
            "ls > /tmp/../etc/passwd",
            "ls > \"$HOME/x\"",
            "ls > /tmp/$(id -u)",
        ] {
            assert!(judge(&tmp, line, true).is_some(), "{line}");
        }
        // Deny: with `writes`, only lines writing a matching file.
        let deny_etc = ExecSpec {
            programs: Vec::new(),
            ..spec(&["/etc/*"])
        };
        assert_eq!(judge(&deny_etc, "ls > /etc/passwd", false), None);
        assert!(judge(&deny_etc, "ls > /tmp/x", false).is_some());
        assert!(judge(&deny_etc, "ls /etc", false).is_some());
    }

    #[test]
    fn what_is_not_modelled_is_unknown() {
        for line in [
            "",
            "   ",
            "echo 'open",
            "echo \"open",
            "(rm -rf /)",
            "{ rm -rf /; }",
            "if true; then rm x; fi",
            "for f in *; do rm $f; done",
            "cat <<EOF\nx\nEOF",
            "diff <(ls a) <(ls b)",
            "$CMD -rf /",
            "${SHELL} -c x",
            "$(echo rm) -rf /",
            "r* -rf /",
            "PATH=/tmp ls",
            "LD_PRELOAD=/x.so ls",
            "ls # comment",
            "ls &&",
            "ls |",
            "; ls",
            "a ;; b",
            "echo $'\\x41'",
            "echo >",
            "trailing \\",
            // A program that runs the program in its arguments.
            "env rm -rf /",
            "/usr/bin/env -i rm x",
            "ls | xargs rm",
            "sudo -u root rm x",
            "nice -n 5 rm x",
            "timeout 5 rm x",
            "eval 'rm x'",
            "echo ok; command rm x",
            "{rm,-f,x}",
            "ls; {rm,-rf,/srv}",
        ] {
            assert!(split(line).is_err(), "{line:?} should be unknown");
            assert_eq!(classify(line).class, Class::Unknown, "{line:?}");
        }
        let deep = format!("{}x{}", "$(echo ".repeat(20), ")".repeat(20));
        assert!(split(&deep).is_err());
        assert!(split(&"a;".repeat(MAX_PARTS + 1)).is_err());
        assert!(split(&"x".repeat(MAX_LINE + 1)).is_err());
    }

    #[test]
    fn commands_globs_never_allow_climbing_out() {
        let spec = ExecSpec {
            commands: vec![Glob("scp -f /srv/*".into())],
            ..ExecSpec::default()
        };
        let ok = classify("scp -f /srv/data/x.csv");
        assert_eq!(mismatch(&spec, &ok, true), None);
        for line in [
            "scp -f /srv/../etc/shadow",
            "scp -f /srv/a/../../etc/shadow",
        ] {
            let f = classify(line);
            assert!(mismatch(&spec, &f, true).is_some(), "{line}");
            assert_eq!(
                mismatch(&spec, &f, false),
                None,
                "deny still matches {line}"
            );
        }
    }

    #[test]
    fn options_that_run_a_command_are_unknown() {
        for line in [
            "find /srv -name x -exec rm {} ;",
            "find /srv -execdir sh -c 'rm x' \\;",
            "find . -ok rm {} +",
            "rsync -e 'sh -c \"rm -rf /srv\"' a b:",
            "rsync -avze ssh a b:",
            "rsync --rsh=sh a b:",
            "rsync --rsync-path='rm -rf /srv' a b:",
            "tar --to-command='sh -c x' -xf a.tar",
            "tar xIf 'sh -c x' a.tar",
            "tar -cf a.tar --checkpoint=1 --checkpoint-action=exec=id /srv",
            "tar -c -I zstd -f a.tar /srv",
            "scp -S /tmp/x a b:",
            "scp -oProxyCommand=id a b:",
            "sftp -D /tmp/x host",
            "git -c core.pager='sh -c x' log",
            "git clone --upload-pack='rm -rf /srv' x y",
            "/usr/bin/find . -exec id ;",
            "zip -T -TT 'sh -c x' a.zip f",
            "tcpdump -i lo -G 1 -z /tmp/x -w f",
            "tar --to-comm='sh -c x' -xf a.tar",
            "tar --use-compress-prog=x -xf a.tar",
            "git clone --upload-p='rm -rf /srv' x y",
            "git --exec-path=/tmp status",
            "git rebase -x 'rm -rf /srv' HEAD~1",
            "git submodule foreach 'rm -rf /srv'",
            "git bisect run ./x",
            "sftp -b cmds host",
        ] {
            assert!(split(line).is_err(), "{line:?} should be unknown");
            assert_eq!(classify(line).class, Class::Unknown, "{line:?}");
        }
        assert_eq!(
            classify_argv(&["find", "/", "-exec", "rm", "{}", ";"], "exec").class,
            Class::Unknown
        );
        // rsync's server mode does not excuse a daemon, its config (`pre-xfer exec`) or its
        // parameters.
        for line in [
            "rsync --server --daemon .",
            "rsync --daemon --config=/tmp/x",
            "rsync --server --daemon --config=/srv/in/rsyncd.conf .",
            "rsync --server --daemon -M pre-xfer\\ exec=id .",
            "rsync --server --daemon --dparam=pre-xfer\\ exec=id .",
            "rsync --server --daem .",
            "rsync --server -vM x . /srv/in",
            "rsync --server -Mfoo . /srv/in",
            "rsync --remote-option=--daemon a b:",
        ] {
            assert!(split(line).is_err(), "{line:?} should be unknown");
        }
        // The same programs without those options are judged, and rsync's server mode (its
        // `-e.iLsf` is the client's capability string) is what an rsync client sends.
        for line in [
            "find /srv -name '*.csv' -print",
            "rsync --server -vlogDtpre.iLsfxCIvu . /srv/in",
            "rsync --server --sender -vlogDtpre.iLsfxCIvu . /srv/out",
            "tar -czf a.tar.gz /srv",
            "tar tf a.tar",
            "scp -t /srv/in",
            "scp -p -f /srv/out",
            "git log --oneline",
            "zip -r a.zip /srv",
            "tcpdump -i lo -c 1",
        ] {
            assert_eq!(classify(line).class, Class::Admin, "{line:?}");
        }
    }

    #[test]
    fn wrappers_alone_are_programs_like_others() {
        for line in ["env", "env -0", "/usr/bin/env", "nohup --version"] {
            assert_eq!(classify(line).class, Class::Admin, "{line:?}");
        }
        assert_eq!(
            classify_argv(&["env", "rm", "x"], "exec").class,
            Class::Unknown
        );
        assert_eq!(classify_argv(&["env"], "exec").class, Class::Admin);
    }

    #[test]
    fn facts_list_programs_and_commands() {
        let f = classify("/usr/bin/git status && rm -rf /tmp/x");
        assert_eq!(f.class, Class::Admin);
        assert_eq!(f.programs, ["/usr/bin/git", "rm"]);
        assert_eq!(f.objects, ["/usr/bin/git status", "rm -rf /tmp/x"]);
        assert!(f.notes[0].contains("compound"), "{:?}", f.notes);
    }

    #[test]
    fn rule_matching_is_all_parts_for_allow_and_any_for_deny() {
        let spec = |programs: &[&str], compound: bool| ExecSpec {
            programs: programs.iter().map(|p| Glob((*p).into())).collect(),
            commands: Vec::new(),
            compound,
            writes: Vec::new(),
        };
        let ls = classify("/bin/ls -la");
        assert_eq!(mismatch(&spec(&["ls"], false), &ls, true), None);
        let both = classify("ls; rm -rf /");
        assert!(mismatch(&spec(&["ls", "rm"], false), &both, true).is_some());
        assert_eq!(mismatch(&spec(&["ls", "rm"], true), &both, true), None);
        assert!(mismatch(&spec(&["ls"], true), &both, true).is_some());
        // Deny: any part.
        assert_eq!(mismatch(&spec(&["rm"], false), &both, false), None);
        assert!(mismatch(&spec(&["shutdown"], false), &both, false).is_some());
        // Unknown: never allowed, always denied.
        let unknown = classify("$X");
        assert!(mismatch(&spec(&["*"], true), &unknown, true).is_some());
        assert_eq!(mismatch(&spec(&["rm"], false), &unknown, false), None);
        // Commands globs see the whole part, word by word.
        let cmds = ExecSpec {
            programs: Vec::new(),
            commands: vec![Glob("git status".into()), Glob("git status -*".into())],
            compound: false,
            writes: Vec::new(),
        };
        assert_eq!(mismatch(&cmds, &classify("git status -s"), true), None);
        assert_eq!(mismatch(&cmds, &classify("git status"), true), None);
        assert!(mismatch(&cmds, &classify("git status -s x"), true).is_some());
        assert!(mismatch(&cmds, &classify("git push"), true).is_some());
    }
}
