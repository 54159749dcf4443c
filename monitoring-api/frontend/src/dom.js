// The few DOM helpers every part of the dashboard uses.

export const $ = (sel) => document.querySelector(sel);

// The muted line a list shows in place of items it does not have ("No alerts.").
export function emptyNote(text) {
  const li = document.createElement("li");
  li.className = "muted";
  li.textContent = text;
  return li;
}
