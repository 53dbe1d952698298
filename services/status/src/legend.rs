//! What a platform's front-end and server-side statuses mean together, in
//! plain words: the line the panel shows beside them, and the API's
//! `meaning`. The panel's legend lists the same sentences.

/// The sentence for a front-end status (fired, not_fired, unknown) and a
/// server-side status.
pub fn meaning(front_end: &str, server_side: &str) -> &'static str {
    let fired = front_end == "fired";
    let not_fired = front_end == "not_fired";
    match server_side {
        "delivered" if fired => "Both fired and delivered: the best case; the platform deduplicates the two by event id.",
        "delivered" if not_fired => "Front-end not fired, server-side delivered: the server-side upload covered a blocked or missing pixel.",
        "delivered" => "Server-side delivered; no browser report said whether the pixel fired.",
        "eligible" | "retrying" if fired => "Pixel fired; the server-side upload is on its way (sent on or retrying).",
        "eligible" | "retrying" => "The server-side upload is on its way (sent on or retrying); nothing else reached the platform yet.",
        "not_eligible" if fired => "Pixel fired, server-side not eligible: the platform has only the browser's event; the reason says why the upload was left out.",
        "not_eligible" => "Neither fired nor eligible: the platform got nothing. Look at consent and the click id first.",
        "rejected" if fired => "Pixel fired, server-side rejected: the platform has the browser's event; fix what the rejection names for the next ones.",
        "rejected" => "Server-side rejected and no pixel: the platform has nothing. The reason is the platform's own.",
        "expired" => "Server-side expired: it waited past the platform's window (an outage or a backlog) and was not sent.",
        "failed" => "Server-side failed after every attempt: a dead letter on conversions.rejected; replay it once the cause is gone.",
        _ if fired => "Pixel fired; no server-side outcome recorded yet.",
        _ => "No outcome recorded yet for this platform.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_corners_of_the_legend() {
        assert!(meaning("not_fired", "delivered").contains("covered a blocked"));
        assert!(meaning("fired", "delivered").contains("best case"));
        assert!(meaning("not_fired", "not_eligible").contains("consent and the click id"));
        assert!(meaning("fired", "not_eligible").contains("only the browser's event"));
    }
}
