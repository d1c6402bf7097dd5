//! Branch patterns: a branch name, or a glob over branch names.
//!
//! A small hand-written matcher instead of a glob crate: branch names need
//! only `*` and `?`, and `*` must cross `/` as in `git branch --list`, which
//! path-oriented glob crates do not do by default.

/// A branch name, or a glob over branch names where `*` matches any run of
/// characters (including `/`, as `git branch --list` does) and `?` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchPattern(String);

impl BranchPattern {
    /// Checks a pattern: with its wildcards replaced it must be a valid branch name.
    ///
    /// # Errors
    /// The reason the pattern can never match a branch.
    pub fn new(pattern: &str) -> Result<BranchPattern, String> {
        let probe: String = pattern.chars().map(|c| if c == '*' || c == '?' { 'x' } else { c }).collect();
        protocol::Branch::new(probe).map_err(|err| format!("branch pattern {pattern:?}: {err}"))?;
        Ok(BranchPattern(pattern.to_string()))
    }

    /// Whether `branch` (a name under `refs/heads/`) matches.
    pub fn matches(&self, branch: &str) -> bool {
        glob_matches(self.0.as_bytes(), branch.as_bytes())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Iterative wildcard matching with one backtrack point, linear in practice.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut pattern_idx, mut text_idx) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while text_idx < text.len() {
        match pattern.get(pattern_idx) {
            Some(b'*') => {
                star = Some((pattern_idx, text_idx));
                pattern_idx += 1;
            }
            Some(&byte) if byte == b'?' || byte == text[text_idx] => {
                pattern_idx += 1;
                text_idx += 1;
            }
            _ => match star {
                Some((star_pattern_idx, star_text_idx)) => {
                    pattern_idx = star_pattern_idx + 1;
                    text_idx = star_text_idx + 1;
                    star = Some((star_pattern_idx, star_text_idx + 1));
                }
                None => return false,
            },
        }
    }
    pattern[pattern_idx..].iter().all(|&byte| byte == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_git_branch_list() {
        let check = |pattern: &str, branch: &str| BranchPattern::new(pattern).unwrap().matches(branch);
        assert!(check("release/*", "release/1.2"));
        assert!(check("release/*", "release/1.2/hotfix"));
        assert!(!check("release/*", "release"));
        assert!(!check("release/*", "main"));
        assert!(check("*", "main"));
        assert!(check("feat-?", "feat-a"));
        assert!(!check("feat-?", "feat-ab"));
        assert!(check("a*b*c", "axxbyyc"));
        assert!(!check("a*b*c", "axxbyy"));
        assert!(check("main", "main"));
        assert!(!check("main", "main2"));
        assert!(BranchPattern::new("a b").is_err());
        assert!(BranchPattern::new("..").is_err());
    }
}
