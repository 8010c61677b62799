// Starts Swagger UI on /docs (only served with SIGNATURES_DOCS=on). It lives in a file of
// its own because the page's Content-Security-Policy allows no inline script.
"use strict";

(function () {
  const root = document.getElementById("swagger-ui");
  if (!root || !window.SwaggerUIBundle) {
    return;
  }
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.openapi,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null, // the default validator is another site
    presets: [window.SwaggerUIBundle.presets.apis],
  });
})();
