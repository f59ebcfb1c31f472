//! The texts of Shomei's e-mails, in Japanese and English: a subject, a plain-text part and an
//! HTML part for each [`Message`].
//!
//! Bodies are askama templates under `notify/templates/{ja,en}/`, checked at compile time;
//! `.html` templates escape every interpolated value (a document title is user input), `.txt`
//! ones do not. Subjects are built here. Japanese mails show times in Japan time (a fixed
//! +09:00: Japan has no daylight saving), English ones in UTC.
//!
//! This module only renders: it never decides who gets a mail or sends one.

use std::fmt;
use std::str::FromStr;

use askama::Template;
use chrono::{DateTime, FixedOffset, Utc};

/// The language of a mail. Japanese is the default: Shomei's users are in Japan.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Locale {
    #[default]
    Ja,
    En,
}

impl Locale {
    pub fn as_str(self) -> &'static str {
        match self {
            Locale::Ja => "ja",
            Locale::En => "en",
        }
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown locale {0:?} (expected \"ja\" or \"en\")")]
pub struct UnknownLocale(pub String);

impl FromStr for Locale {
    type Err = UnknownLocale;

    /// `ja`, `en`, case-insensitive; a region suffix (`ja-JP`, `en_US`) is ignored.
    fn from_str(s: &str) -> Result<Locale, UnknownLocale> {
        let language = s.split(['-', '_']).next().unwrap_or_default();
        if language.eq_ignore_ascii_case("ja") {
            Ok(Locale::Ja)
        } else if language.eq_ignore_ascii_case("en") {
            Ok(Locale::En)
        } else {
            Err(UnknownLocale(s.to_owned()))
        }
    }
}

/// What happened, with what the mail needs to say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// To a signer whose turn it is.
    Invitation {
        signer_name: String,
        document_title: String,
        sender_name: String,
        link: String,
        expires_at: DateTime<Utc>,
        access_code_required: bool,
    },
    /// The 6-digit one-time code of a witness signature.
    VerificationCode {
        signer_name: String,
        document_title: String,
        code: String,
        valid_minutes: u32,
    },
    /// To a person signing in: the second factor, one code per login.
    LoginCode {
        name: String,
        code: String,
        valid_minutes: u32,
    },
    /// To the owner and every signer when the last signer has signed.
    Completed {
        recipient_name: String,
        document_title: String,
    },
    /// To the owner when a signer declines.
    Declined {
        recipient_name: String,
        document_title: String,
        signer_name: String,
        reason: Option<String>,
    },
    /// To signers still waiting when the sender cancels.
    Cancelled {
        recipient_name: String,
        document_title: String,
    },
}

/// A mail's texts, ready for [`crate::mail::Email`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

// What the templates see: borrowed, already formatted.

struct Invitation<'a> {
    signer_name: &'a str,
    document_title: &'a str,
    sender_name: &'a str,
    link: &'a str,
    expires_at: String,
    access_code_required: bool,
}

struct VerificationCode<'a> {
    signer_name: &'a str,
    document_title: &'a str,
    code: &'a str,
    valid_minutes: u32,
}

struct LoginCode<'a> {
    name: &'a str,
    code: &'a str,
    valid_minutes: u32,
}

/// Completed and Cancelled say the same kind of thing to the same kind of person.
struct Notice<'a> {
    recipient_name: &'a str,
    document_title: &'a str,
}

struct Declined<'a> {
    recipient_name: &'a str,
    document_title: &'a str,
    signer_name: &'a str,
    reason: Option<&'a str>,
}

/// Declares the template structs: a text one holds the message (`m`); an HTML one also the
/// page's `lang` and `subject` (its `<title>`), used by `layout.html`.
macro_rules! templates {
    ($( $kind:ident $name:ident($ctx:ident) = $path:tt; )*) => { $( templates!(@$kind $name $ctx $path); )* };
    (@text $name:ident $ctx:ident $path:tt) => {
        #[derive(Template)]
        #[template(path = $path)]
        struct $name<'a> {
            m: &'a $ctx<'a>,
        }
    };
    (@html $name:ident $ctx:ident $path:tt) => {
        #[derive(Template)]
        #[template(path = $path)]
        struct $name<'a> {
            m: &'a $ctx<'a>,
            lang: &'static str,
            subject: &'a str,
        }
    };
}

templates! {
    text InvitationJaTxt(Invitation) = "ja/invitation.txt";
    html InvitationJaHtml(Invitation) = "ja/invitation.html";
    text InvitationEnTxt(Invitation) = "en/invitation.txt";
    html InvitationEnHtml(Invitation) = "en/invitation.html";
    text CodeJaTxt(VerificationCode) = "ja/verification_code.txt";
    html CodeJaHtml(VerificationCode) = "ja/verification_code.html";
    text CodeEnTxt(VerificationCode) = "en/verification_code.txt";
    html CodeEnHtml(VerificationCode) = "en/verification_code.html";
    text LoginJaTxt(LoginCode) = "ja/login_code.txt";
    html LoginJaHtml(LoginCode) = "ja/login_code.html";
    text LoginEnTxt(LoginCode) = "en/login_code.txt";
    html LoginEnHtml(LoginCode) = "en/login_code.html";
    text CompletedJaTxt(Notice) = "ja/completed.txt";
    html CompletedJaHtml(Notice) = "ja/completed.html";
    text CompletedEnTxt(Notice) = "en/completed.txt";
    html CompletedEnHtml(Notice) = "en/completed.html";
    text DeclinedJaTxt(Declined) = "ja/declined.txt";
    html DeclinedJaHtml(Declined) = "ja/declined.html";
    text DeclinedEnTxt(Declined) = "en/declined.txt";
    html DeclinedEnHtml(Declined) = "en/declined.html";
    text CancelledJaTxt(Notice) = "ja/cancelled.txt";
    html CancelledJaHtml(Notice) = "ja/cancelled.html";
    text CancelledEnTxt(Notice) = "en/cancelled.txt";
    html CancelledEnHtml(Notice) = "en/cancelled.html";
}

/// Renders the text and HTML templates of a locale into a [`Rendered`].
macro_rules! bodies {
    ($locale:expr, $subject:expr, $m:expr, $ja_txt:ident, $ja_html:ident, $en_txt:ident, $en_html:ident) => {{
        let subject: String = $subject;
        let m = &$m;
        let lang = $locale.as_str();
        let (text, html) = match $locale {
            Locale::Ja => (
                fill($ja_txt { m }.render()),
                fill(
                    $ja_html {
                        m,
                        lang,
                        subject: &subject,
                    }
                    .render(),
                ),
            ),
            Locale::En => (
                fill($en_txt { m }.render()),
                fill(
                    $en_html {
                        m,
                        lang,
                        subject: &subject,
                    }
                    .render(),
                ),
            ),
        };
        Rendered {
            subject,
            text,
            html,
        }
    }};
}

pub fn render(message: &Message, locale: Locale) -> Rendered {
    let ja = locale == Locale::Ja;
    match message {
        Message::Invitation {
            signer_name,
            document_title,
            sender_name,
            link,
            expires_at,
            access_code_required,
        } => {
            let m = Invitation {
                signer_name,
                document_title,
                sender_name,
                link,
                expires_at: format_time(*expires_at, locale),
                access_code_required: *access_code_required,
            };
            let subject = if ja {
                format!("署名のお願い：{document_title}")
            } else {
                format!("Please sign: {document_title}")
            };
            bodies!(
                locale,
                subject,
                m,
                InvitationJaTxt,
                InvitationJaHtml,
                InvitationEnTxt,
                InvitationEnHtml
            )
        }
        Message::VerificationCode {
            signer_name,
            document_title,
            code,
            valid_minutes,
        } => {
            let m = VerificationCode {
                signer_name,
                document_title,
                code,
                valid_minutes: *valid_minutes,
            };
            // The code stays out of the subject, which lock screens and notifications show.
            let subject = if ja {
                format!("確認コードのお知らせ：{document_title}")
            } else {
                format!("Your verification code: {document_title}")
            };
            bodies!(locale, subject, m, CodeJaTxt, CodeJaHtml, CodeEnTxt, CodeEnHtml)
        }
        Message::LoginCode {
            name,
            code,
            valid_minutes,
        } => {
            let m = LoginCode {
                name,
                code,
                valid_minutes: *valid_minutes,
            };
            let subject = if ja {
                "ログイン確認コードのお知らせ".to_owned()
            } else {
                "Your code to sign in".to_owned()
            };
            bodies!(
                locale,
                subject,
                m,
                LoginJaTxt,
                LoginJaHtml,
                LoginEnTxt,
                LoginEnHtml
            )
        }
        Message::Completed {
            recipient_name,
            document_title,
        } => {
            let m = Notice {
                recipient_name,
                document_title,
            };
            let subject = if ja {
                format!("署名完了のお知らせ：{document_title}")
            } else {
                format!("Signed by everyone: {document_title}")
            };
            bodies!(
                locale,
                subject,
                m,
                CompletedJaTxt,
                CompletedJaHtml,
                CompletedEnTxt,
                CompletedEnHtml
            )
        }
        Message::Declined {
            recipient_name,
            document_title,
            signer_name,
            reason,
        } => {
            let m = Declined {
                recipient_name,
                document_title,
                signer_name,
                reason: reason.as_deref().map(str::trim).filter(|r| !r.is_empty()),
            };
            let subject = if ja {
                format!("署名辞退のお知らせ：{document_title}")
            } else {
                format!("Declined: {document_title}")
            };
            bodies!(
                locale,
                subject,
                m,
                DeclinedJaTxt,
                DeclinedJaHtml,
                DeclinedEnTxt,
                DeclinedEnHtml
            )
        }
        Message::Cancelled {
            recipient_name,
            document_title,
        } => {
            let m = Notice {
                recipient_name,
                document_title,
            };
            let subject = if ja {
                format!("署名依頼取り消しのお知らせ：{document_title}")
            } else {
                format!("Signing request cancelled: {document_title}")
            };
            bodies!(
                locale,
                subject,
                m,
                CancelledJaTxt,
                CancelledJaHtml,
                CancelledEnTxt,
                CancelledEnHtml
            )
        }
    }
}

/// `2026年12月10日 18:00 (JST)` or `December 10, 2026 09:00 UTC`.
fn format_time(at: DateTime<Utc>, locale: Locale) -> String {
    match locale {
        Locale::Ja => {
            let jst = FixedOffset::east_opt(9 * 3600).expect("+09:00 is a valid offset");
            at.with_timezone(&jst)
                .format("%Y年%-m月%-d日 %H:%M (JST)")
                .to_string()
        }
        Locale::En => at.format("%B %-d, %Y %H:%M UTC").to_string(),
    }
}

/// Rendering into a `String` fails only if a `Display` impl of a value fails, and ours are
/// `str`, `String`, integers and bools.
fn fill(rendered: askama::Result<String>) -> String {
    rendered.expect("rendering a mail template into a String cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const NASTY: &str = "<script>alert(1)</script> & \"Co\" 'Ltd'";

    fn all_messages(title: &str) -> Vec<Message> {
        vec![
            Message::Invitation {
                signer_name: "山田 太郎".into(),
                document_title: title.into(),
                sender_name: "株式会社サンプル 佐藤".into(),
                link: "https://shomei.localhost/sign/abc?t=1&u=2".into(),
                expires_at: Utc.with_ymd_and_hms(2026, 12, 10, 9, 0, 0).unwrap(),
                access_code_required: true,
            },
            Message::VerificationCode {
                signer_name: "山田 太郎".into(),
                document_title: title.into(),
                code: "048213".into(),
                valid_minutes: 10,
            },
            Message::Completed {
                recipient_name: "佐藤 花子".into(),
                document_title: title.into(),
            },
            Message::Declined {
                recipient_name: "佐藤 花子".into(),
                document_title: title.into(),
                signer_name: "山田 太郎".into(),
                reason: Some("金額が<違います> & 再確認ください".into()),
            },
            Message::Declined {
                recipient_name: "佐藤 花子".into(),
                document_title: title.into(),
                signer_name: "山田 太郎".into(),
                reason: None,
            },
            Message::Cancelled {
                recipient_name: "山田 太郎".into(),
                document_title: title.into(),
            },
        ]
    }

    #[test]
    fn every_message_renders_in_both_locales() {
        for locale in [Locale::Ja, Locale::En] {
            for message in all_messages("業務委託契約書") {
                let r = render(&message, locale);
                assert!(r.subject.contains("業務委託契約書"), "{r:?}");
                assert!(r.text.contains("業務委託契約書"), "{r:?}");
                assert!(r.html.contains("業務委託契約書"), "{r:?}");
                assert!(!r.subject.contains('\n'));
                assert!(!r.text.contains("{{") && !r.html.contains("{{"));
                assert!(
                    !r.text.contains("<p") && !r.text.contains("&#"),
                    "the text part is plain: {}",
                    r.text
                );
                assert!(r.html.starts_with("<!DOCTYPE html>"));
                assert!(r.html.contains(&format!("<html lang=\"{locale}\">")));
                let japanese = r.text.contains("様");
                assert_eq!(japanese, locale == Locale::Ja, "{}", r.text);
            }
        }
    }

    #[test]
    fn japanese_invitation_reads_as_business_japanese_with_japan_time() {
        let r = render(&all_messages("業務委託契約書")[0], Locale::Ja);
        assert_eq!(r.subject, "署名のお願い：業務委託契約書");
        assert!(r.text.starts_with("山田 太郎 様\n"), "{}", r.text);
        assert!(r.text.contains("株式会社サンプル 佐藤 様より"));
        assert!(
            r.text.contains("署名期限：2026年12月10日 18:00 (JST)"),
            "{}",
            r.text
        );
        assert!(r.text.contains("アクセスコードが必要です"));
        assert!(r.text.contains("https://shomei.localhost/sign/abc?t=1&u=2"));
        assert!(
            r.html
                .contains("href=\"https://shomei.localhost/sign/abc?t=1&#38;u=2\"")
                || r.html
                    .contains("href=\"https://shomei.localhost/sign/abc?t=1&amp;u=2\"")
        );
    }

    #[test]
    fn english_invitation_shows_utc() {
        let r = render(&all_messages("Services Agreement")[0], Locale::En);
        assert_eq!(r.subject, "Please sign: Services Agreement");
        assert!(
            r.text.contains("Sign by: December 10, 2026 09:00 UTC"),
            "{}",
            r.text
        );
    }

    #[test]
    fn invitation_without_access_code_does_not_mention_one() {
        let mut m = all_messages("契約書").remove(0);
        if let Message::Invitation {
            access_code_required,
            ..
        } = &mut m
        {
            *access_code_required = false;
        }
        assert!(!render(&m, Locale::Ja).text.contains("アクセスコード"));
        assert!(!render(&m, Locale::En).html.contains("access code"));
    }

    #[test]
    fn html_parts_escape_every_interpolated_value() {
        for locale in [Locale::Ja, Locale::En] {
            for message in all_messages(NASTY) {
                let r = render(&message, locale);
                assert!(!r.html.contains("<script>"), "{}", r.html);
                assert!(!r.html.contains("& \""), "{}", r.html);
                assert!(!r.html.contains("<違います>"), "{}", r.html);
                assert!(r.html.contains("&#60;script&#62;") || r.html.contains("&lt;script&gt;"));
                // The subject goes into <title> escaped too.
                assert!(!r.html.contains(&format!("<title>{}", r.subject)));
                // Text parts and subjects are plain: no escaping there.
                assert!(r.subject.contains(NASTY));
                assert!(r.text.contains(NASTY), "{}", r.text);
            }
        }
    }

    #[test]
    fn verification_code_appears_in_both_parts_but_not_the_subject() {
        for locale in [Locale::Ja, Locale::En] {
            let r = render(&all_messages("契約書")[1], locale);
            assert!(r.text.contains("048213"));
            assert!(r.html.contains("048213"));
            assert!(r.text.contains("10"));
            assert!(!r.subject.contains("048213"));
        }
    }

    #[test]
    fn declined_shows_the_reason_or_says_there_was_none() {
        let with = render(&all_messages("契約書")[3], Locale::Ja);
        assert!(with.text.contains("金額が<違います> & 再確認ください"));
        let without = render(&all_messages("契約書")[4], Locale::Ja);
        assert!(without.text.contains("辞退の理由は記載されていません。"));
        let without = render(&all_messages("契約書")[4], Locale::En);
        assert!(without.text.contains("No reason was given."));
    }

    #[test]
    #[ignore = "prints every mail, for reading them"]
    fn print_all() {
        for locale in [Locale::Ja, Locale::En] {
            for message in all_messages("業務委託契約書") {
                let r = render(&message, locale);
                eprintln!("==== {}\n{}\n---- html\n{}", r.subject, r.text, r.html);
            }
        }
    }

    #[test]
    fn locale_parses_and_serializes_lowercase() {
        assert_eq!("ja".parse::<Locale>().unwrap(), Locale::Ja);
        assert_eq!("EN".parse::<Locale>().unwrap(), Locale::En);
        assert_eq!("ja-JP".parse::<Locale>().unwrap(), Locale::Ja);
        assert!("fr".parse::<Locale>().is_err());
        assert_eq!(serde_json::to_string(&Locale::En).unwrap(), "\"en\"");
        assert_eq!(
            serde_json::from_str::<Locale>("\"ja\"").unwrap(),
            Locale::Ja
        );
        assert_eq!(Locale::default(), Locale::Ja);
    }
}
