// The error banner and the confirmation dialog, shared by every view.

const banner = document.getElementById("error-banner");
banner.querySelector(".error-close").addEventListener("click", clearError);

// Show an ApiError (or any Error) with its code, message and request id.
export function showError(error, context = "") {
  const code = error.code || error.name || "error";
  const prefix = context ? `${context}: ` : "";
  banner.querySelector(".error-code").textContent = code;
  banner.querySelector(".error-message").textContent = prefix + error.message;
  banner.querySelector(".error-request-id").textContent = error.requestId ? `request id ${error.requestId}` : "";
  banner.dataset.code = code;
  banner.hidden = false;
}

// Report an error of an API call. A 401 means that the stored token no longer
// works, so the app signs out and shows the sign-in form again.
export function reportError(error, context = "") {
  if (error.status === 401) {
    window.dispatchEvent(new CustomEvent("gl-unauthorized", { detail: error }));
    return;
  }
  showError(error, context);
}

export function clearError() {
  banner.hidden = true;
  delete banner.dataset.code;
}

const dialog = document.getElementById("confirm-dialog");

// Ask the user to confirm an action. With `option`, the dialog shows a
// checkbox; the promise resolves to {confirmed, checked}.
export function confirmAction({ title, message, confirmLabel, option = null }) {
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-message").textContent = message;
  document.getElementById("confirm-ok").textContent = confirmLabel;

  const optionLabel = document.getElementById("confirm-option");
  const optionHelp = document.getElementById("confirm-option-help");
  const checkbox = document.getElementById("confirm-checkbox");
  optionLabel.hidden = option === null;
  optionHelp.hidden = option === null || !option.help;
  checkbox.checked = false;
  if (option !== null) {
    document.getElementById("confirm-option-label").textContent = option.label;
    optionHelp.textContent = option.help || "";
  }

  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve({ confirmed: dialog.returnValue === "confirm", checked: checkbox.checked });
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-back").focus();
  });
}
