"""Suppressions: the addresses nobody may message, whoever's contact row holds them. An
operator lifts one only with a written reason (drip.domain.consent.lift_suppression says who may
lift what); nobody adds or deletes them here."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from drip.domain import consent
from drip.doors.console.audit import record
from drip.models import Suppression


class LiftForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=2000, strip=True,
        help_text="Why this address may be messaged again (kept with the suppression and in the admin log).",
    )


class ActiveFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "active"), ("lifted", "lifted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Suppression]) -> QuerySet[Suppression]:
        if self.value() == "active":
            return queryset.filter(lifted_at__isnull=True)
        if self.value() == "lifted":
            return queryset.filter(lifted_at__isnull=False)
        return queryset


class SuppressionAdmin(admin.ModelAdmin):
    list_display = ("channel", "shown_address", "source", "detail", "created_at", "lifted_at", "lifted_by")
    list_filter = (ActiveFilter, "channel", "source")
    search_fields = ("address", "detail")
    ordering = ("-created_at", "-id")
    readonly_fields = ("channel", "address", "source", "detail", "reason", "created_at", "lifted_at", "lifted_by",
                       "lift_reason")
    fields = readonly_fields
    actions = ["lift_suppressions"]

    @admin.display(description="address", ordering="address")
    def shown_address(self, suppression: Suppression) -> str:
        return suppression.address or "(erased)"

    # Suppressions are made by recipients, providers and erasures, and lifted, never removed.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Nothing on the page is editable: "change" is the permission the lift action needs.
        return obj is None and super().has_change_permission(request)

    @admin.action(description="Lift with a reason…", permissions=["change"])
    def lift_suppressions(self, request: HttpRequest, queryset: QuerySet[Suppression]) -> HttpResponse | None:
        active = list(queryset.filter(lifted_at__isnull=True))
        form = LiftForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            reason = form.cleaned_data["reason"]
            username = request.user.get_username()
            lifted = [s for s in active if consent.lift_suppression(s, by=username, reason=reason)]
            record(request, lifted, f"Lifted via action 'lift_suppressions' ({len(lifted)} of {len(active)}): {reason}")
            self.message_user(request, f"Lifted {len(lifted)} suppression(s).", messages.SUCCESS)
            return None
        return render(request, "admin/drip/lift_suppressions.html", {
            **self.admin_site.each_context(request), "suppressions": active, "form": form,
            "title": "Lift suppressions", "opts": self.model._meta,
        })
