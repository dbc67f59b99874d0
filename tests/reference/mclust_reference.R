# Reference numbers from R's mclust for emcli's covariance-model tests.
#
# Run from the repository root (R 4.2, mclust 6.0.0, jsonlite):
#   Rscript tests/reference/mclust_reference.R
# It writes the data sets it exports (tests/reference/data/*.csv) and
# tests/reference/mclust_*.json. The tests read only those files: CI never
# needs R.
suppressPackageStartupMessages({ library(mclust); library(jsonlite) })

out <- "tests/reference"
models <- c("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE",
            "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")

data(faithful); data(diabetes); data(banknote); data(thyroid); data(wdbc)
sets <- list(
  faithful = faithful,
  iris = iris[, 1:4],
  diabetes = diabetes[, -1],
  banknote = banknote[, -1],
  thyroid = thyroid[, -1],
  wdbc = wdbc[, 3:12]
)
for (nm in names(sets)) {
  write.csv(sets[[nm]], file.path(out, "data", paste0(nm, ".csv")), row.names = FALSE)
}

# Responsibilities for the M-step references: a soft version of mclust's hc
# partition (0.8 on the hc class, 0.2 spread evenly), reproducible in Python
# from the committed numbers.
soft_z <- function(X, G) {
  cl <- hclass(hc(X, modelName = "VVV"), G)
  0.8 * unmap(cl) + 0.2 / G
}

# the inner iterations run to a tolerance tighter than the issue's 1e-12, so that
# the M-steps of the iterative models are converged to the digits compared
ctl <- emControl(tol = c(1e-5, 1e-15), itmax = c(.Machine$integer.max, 1000000))
mstep_ref <- list()
for (nm in c("iris", "diabetes", "banknote", "faithful")) {
  X <- as.matrix(sets[[nm]])
  G <- 3
  z <- soft_z(X, G)
  per_model <- list()
  for (m in models) {
    fit <- mstep(data = X, modelName = m, z = z, control = ctl, warn = FALSE)
    par <- fit$parameters
    per_model[[m]] <- list(
      pro = as.numeric(par$pro),
      mean = t(par$mean),                                      # G x d
      sigma = lapply(1:G, function(k) par$variance$sigma[, , k]), # G of d x d
      nVarParams = nVarParams(m, ncol(X), G)
    )
  }
  mstep_ref[[nm]] <- list(dataset = nm, G = G, z = z, models = per_model)
}
write_json(mstep_ref, file.path(out, "mclust_mstep.json"), digits = NA, auto_unbox = TRUE)

# One EM run per model from the same responsibilities (iris, G = 3), to a
# tight tolerance so that the comparison measures the optimum.
X <- as.matrix(sets$iris)
z <- soft_z(X, 3)
tight <- emControl(tol = c(1e-10, 1e-12), itmax = c(.Machine$integer.max, 10000))
me_ref <- list()
for (m in models) {
  fit <- me(data = X, modelName = m, z = z, control = tight, warn = FALSE)
  me_ref[[m]] <- list(loglik = fit$loglik, iterations = as.numeric(attr(fit, "info"))[1],
                      pro = as.numeric(fit$parameters$pro),
                      mean = t(fit$parameters$mean))
}
write_json(list(dataset = "iris", G = 3, z = z, models = me_ref),
           file.path(out, "mclust_me.json"), digits = NA, auto_unbox = TRUE)

# BIC tables at mclust's defaults, G = 1..9, with the sweep time.
bic_ref <- list()
for (nm in names(sets)) {
  X <- as.matrix(sets[[nm]])
  t <- system.time(b <- mclustBIC(X, G = 1:9, verbose = FALSE))[["elapsed"]]
  tab <- unclass(b)
  rows <- list()
  for (g in 1:9) for (m in models) {
    v <- tab[g, m]
    rows[[length(rows) + 1]] <- list(k = g, model = m, bic = if (is.na(v)) NULL else -v)
  }
  best <- pickBIC(b, 1)
  bm <- strsplit(names(best), ",")[[1]]
  bic_ref[[nm]] <- list(n = nrow(X), d = ncol(X), seconds = t,
                        best_model = bm[1], best_k = as.integer(bm[2]), cells = rows)
}
write_json(bic_ref, file.path(out, "mclust_bic.json"), digits = NA, auto_unbox = TRUE,
           null = "null")
# mclust's default hierarchical start (hc, VVV, on "SVD"-scaled data, as
# mclust.options() has it): the partitions at G = 1..9 for every data set
hc_ref <- list()
for (nm in names(sets)) {
  X <- as.matrix(sets[[nm]])
  cl <- hclass(hc(X, modelName = mclust.options("hcModelName"), use = mclust.options("hcUse")), 1:9)
  hc_ref[[nm]] <- lapply(1:9, function(g) as.integer(cl[, g]))
}
write_json(hc_ref, file.path(out, "mclust_hc.json"), auto_unbox = TRUE)
# Parameter counts: nVarParams for every model, d = 1..6, G = 1..5
counts <- list()
for (m in models) for (d in 1:6) for (G in 1:5) {
  counts[[length(counts) + 1]] <- list(model = m, d = d, G = G, nVarParams = nVarParams(m, d, G))
}
write_json(counts, file.path(out, "mclust_nvarparams.json"), digits = NA, auto_unbox = TRUE)
cat("written\n")
